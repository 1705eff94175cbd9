//! A processor on the stack's SASL/SCRAM listener: the right credentials process records; a wrong
//! password ends in a clear error and a non-zero exit, fast; no secret shows in logs or `--help`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartstream_kafka::{read, Topic, TopicNames};
use cartstream_testkit as kit;

const CLEANER: &str = env!("CARGO_BIN_EXE_cartstream-cleaner");

fn scram_password() -> String {
    std::env::var("KAFKA_SCRAM_PASSWORD").unwrap_or_else(|_| "cartstream-secret".into())
}

fn cleaner(prefix: &str, password: &str) -> Command {
    let mut c = Command::new(CLEANER);
    c.args([
        "--topic-prefix",
        prefix,
        "--metrics-addr",
        "off",
        "--instance-id",
        "sec-0",
    ])
    .env("KAFKA_BROKERS", kit::scram_brokers())
    .env("KAFKA_SECURITY_PROTOCOL", "sasl-plaintext")
    .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    .env(
        "KAFKA_USERNAME",
        std::env::var("KAFKA_SCRAM_USERNAME").unwrap_or_else(|_| "cartstream".into()),
    )
    .env("KAFKA_PASSWORD", password)
    .env("SCHEMA_REGISTRY_URL", kit::registry_url())
    .env(
        "RUST_LOG",
        "debug,rdkafka=info,librdkafka=info,hyper=info,reqwest=info,h2=info",
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_and_a_non_zero_exit() {
    kit::require("Kafka's SASL/SCRAM listener", &kit::scram_brokers());
    let started = Instant::now();
    let out = cleaner("it-sec-wrong.", "not-the-password-42")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must exit non-zero");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusal is reported at once"
    );
    assert!(stderr.contains("refused our credentials"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password-42"),
        "the password leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_processes_records_and_never_logs_it() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("sec");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 2, 1)
        .await
        .unwrap();
    // Some raw events, sent over the plain listener.
    let status = Command::new(std::path::Path::new(CLEANER).with_file_name("cartstream-producer"))
        .args([
            "--topic-prefix",
            &prefix,
            "--count",
            "300",
            "--rate",
            "0",
            "--metrics-addr",
            "off",
            "--progress",
            "off",
        ])
        .env("KAFKA_BROKERS", kit::brokers())
        .env("SCHEMA_REGISTRY_URL", kit::registry_url())
        .status();
    match status {
        Ok(s) => assert!(s.success()),
        // The producer is another package's binary: built by `cargo build --workspace --bins`.
        Err(e) => panic!(
            "cartstream-producer next to {CLEANER} is needed (cargo build --workspace --bins): {e}"
        ),
    }

    let password = scram_password();
    let child = cleaner(&prefix, &password)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let clean = names.name(Topic::Clean);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (k, t) = (kafka.clone(), clean.clone());
        got = tokio::task::spawn_blocking(move || {
            read::read_to_end(&k.consumer("it-sec").unwrap(), &t, Duration::from_secs(30))
                .unwrap()
                .len()
        })
        .await
        .unwrap();
        if got >= 300 {
            break;
        }
    }
    // SIGTERM: a clean shutdown.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(got, 300, "every event cleaned over SASL/SCRAM");
    assert!(out.status.success(), "clean exit on SIGTERM: {logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains(&password),
        "the password leaked into debug logs"
    );

    let help = Command::new(CLEANER)
        .arg("--help")
        .env("KAFKA_PASSWORD", &password)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("KAFKA_PASSWORD"), "{help}");
    assert!(
        !help.contains(&password),
        "--help shows the password from the environment"
    );
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
