//! While it runs, the producer serves `/metrics` with its `cartstream_producer_*` counters; on
//! SIGTERM it stops, flushes and reports, and everything it reported sent is on the topic.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cartstream_kafka::Topic;
use cartstream_testkit as kit;
use common::Namespace;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_while_running_and_sigterm_flushes() {
    let ns = Namespace::new("pmetrics").await;
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cartstream-producer"))
        .args(["--topic-prefix", &ns.prefix])
        .args(["--brokers", &kit::brokers()])
        .args(["--schema-registry-url", &kit::registry_url()])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--rate", "500", "--products", "100", "--users", "100"])
        .args(["--progress", "lines", "--duplicate-ratio", "0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    // Wait until some events were sent and the endpoint shows them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Some(t) = get(port, "/metrics") {
            if metric(
                &t,
                "cartstream_producer_events_sent_total{event_type=\"view\"}",
            )
            .is_some_and(|v| v > 100.0)
            {
                break t;
            }
        }
        assert!(Instant::now() < deadline, "no metrics within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    for name in [
        "cartstream_producer_records_sent_total{kind=\"event\"}",
        "cartstream_producer_records_sent_total{kind=\"duplicate\"}",
        "cartstream_producer_faults_injected_total{fault=\"duplicate\"}",
        "cartstream_producer_records_delivered_total",
        "cartstream_producer_dimension_records_total{dimension=\"product\"}",
        "cartstream_producer_event_time_seconds",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(get(port, "/readyz").unwrap().contains("200 OK"));

    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: usize = stdout
        .split("done: sent ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no closing report: {stdout}"));
    assert!(
        stdout.contains("failed 0") && stdout.contains("stopped by signal"),
        "{stdout}"
    );
    assert_eq!(
        ns.read(Topic::Raw).len(),
        sent,
        "everything reported sent is on the topic"
    );
    ns.cleanup().await;
}
