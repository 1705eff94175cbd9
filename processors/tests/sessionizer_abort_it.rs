//! An aborted batch leaves no trace in the sessionizer's state: the schema registry is reached
//! through a proxy in this test, which is cut while a batch holds events of an open session
//! followed by a record written with a schema version the sessionizer has not seen (so decoding it
//! needs the registry: a transient error). The loop aborts the transaction, the sessionizer
//! rebuilds its state from the changelog, and the batch is retried until the proxy is back.
//! Without that rebuild, the events before the failing record would be counted once per attempt.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartstream_events::types::{EnrichedEvent, EventType, Session};
use cartstream_events::{Decoder, Encoder};
use cartstream_kafka::{Topic, TopicNames};
use cartstream_testkit as kit;
use cartstream_testkit::read_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to the registry that can be cut (open connections reset, new ones refused).
struct Proxy {
    addr: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(h);
            }
        });
        Proxy { addr, up, conns }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

fn event(id: &str, session: &str, t: i64) -> EnrichedEvent {
    EnrichedEvent {
        event_id: id.into(),
        event_time: t,
        event_type: EventType::View,
        product_id: 1,
        category_id: 1,
        category_code: "kids.toys".into(),
        brand: "acme".into(),
        price: 3.0,
        currency: "USD".into(),
        quantity: 1,
        user_id: 5,
        user_session: session.into(),
        channel: None,
        source_system: "it".into(),
        product_known: true,
        product_name: "p".into(),
        catalog_price: Some(3.0),
        user_known: true,
        user_country: "FR".into(),
        user_device: "desktop".into(),
        user_segment: "new".into(),
    }
}

fn metric(port: u16, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_batch_is_retried_from_the_committed_state() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("sessabort");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 1, 1)
        .await
        .unwrap();
    let real = kit::registry_url();
    let host = real.split("://").nth(1).unwrap().split('/').next().unwrap();
    let proxy = Proxy::start(host.to_string()).await;
    let path = real.split("://").nth(1).unwrap().split_once('/').unwrap().1;
    let proxied = format!("http://{}/{path}", proxy.addr);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_cartstream-sessionizer"))
        .args([
            "--topic-prefix",
            &prefix,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--instance-id",
            "abort-0",
            "--gap",
            "1m",
            "--grace",
            "10s",
            "--batch-linger-ms",
            "1500",
        ])
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", &proxied)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // A second version of the enriched schema (one more optional field) under a scratch subject:
    // its id is new to the sessionizer, which must fetch it from the registry to decode.
    let mut avsc: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/enriched_event.avsc")).unwrap();
    avsc["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "it_extra", "type": ["null", "string"], "default": null}
        ));
    let v2_id = registry
        .register(&format!("{prefix}scratch-value"), &avsc.to_string())
        .await
        .unwrap();
    let enc: Encoder<EnrichedEvent> = Encoder::register(&registry, &names.subject(Topic::Enriched))
        .await
        .unwrap();
    let v2 = |e: &EnrichedEvent| {
        // Same body plus the new field's null branch, framed with the new id.
        let v1 = enc.encode(e).unwrap();
        let mut b = vec![0];
        b.extend_from_slice(&v2_id.to_be_bytes());
        b.extend_from_slice(&v1[5..]);
        b.push(0);
        b
    };
    let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
    let topic = names.name(Topic::Enriched);
    let send = |payload: Vec<u8>, key: String| {
        let (p, t) = (producer.clone(), topic.clone());
        async move {
            p.send(
                FutureRecord::to(&t)
                    .partition(0)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
    };
    let t0 = 1_790_000_000_000_i64;
    for i in 0..5 {
        let e = event(&format!("e{i}"), "s1", t0 + i * 1000);
        send(enc.encode(&e).unwrap(), e.user_session.clone()).await;
    }
    // Let the first batch commit (and wait for the sessionizer to be up).
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, "cartstream_processor_consumed_total") < 5.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric(port, "cartstream_processor_consumed_total"), 5.0);

    // Cut the registry, then one batch: two events of s1, the new-version record, one more.
    proxy.set_up(false);
    let batch = [
        enc.encode(&event("e5", "s1", t0 + 5_000)).unwrap(),
        enc.encode(&event("e6", "s1", t0 + 6_000)).unwrap(),
        v2(&event("x0", "s2", t0 + 7_000)),
        enc.encode(&event("e7", "s1", t0 + 8_000)).unwrap(),
    ];
    let keys = ["s1", "s1", "s2", "s1"];
    futures::future::join_all(
        batch
            .into_iter()
            .zip(keys)
            .map(|(b, k)| send(b, k.to_string())),
    )
    .await;
    // Some attempts fail meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, "cartstream_processor_retries_total") < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let retries = metric(port, "cartstream_processor_retries_total");
    assert!(retries >= 2.0, "the batch was not retried ({retries})");
    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(port, "cartstream_processor_consumed_total") < 9.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(metric(port, "cartstream_processor_consumed_total"), 9.0);

    // End of input: everything closes.
    let end = event("end", "zz-end", t0 + 86_400_000);
    send(enc.encode(&end).unwrap(), end.user_session.clone()).await;
    let dec = Decoder::<Session>::new(registry.clone());
    let mut sessions: Vec<Session> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && sessions.len() < 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (k, t) = (kafka.clone(), names.name(Topic::Sessions));
        let msgs = tokio::task::spawn_blocking(move || read_all(&k, &t))
            .await
            .unwrap();
        sessions.clear();
        for m in &msgs {
            sessions.push(dec.decode(m.payload().unwrap()).await.unwrap());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0].session_id, format!("s1@{t0}"));
    assert_eq!(
        sessions[0].views, 8,
        "e0..e7 once each, after {retries} failed attempts"
    );
    assert_eq!(sessions[0].session_end, t0 + 8_000);
    assert_eq!(sessions[1].session_id, format!("s2@{}", t0 + 7_000));
    assert_eq!(sessions[1].views, 1);
    eprintln!("sessionizer: {retries} aborted attempts, sessions exact");
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
