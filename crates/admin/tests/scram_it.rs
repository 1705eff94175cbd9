//! The stack's SASL/SCRAM listener: the right credentials work, a wrong password is refused
//! with an authentication error, and the password never shows in our configuration's Debug.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use cartstream_kafka::admin;
use cartstream_kafka::config::SecurityProtocol;
use cartstream_kafka::KafkaArgs;
use cartstream_testkit as kit;

fn scram(password: &str) -> KafkaArgs {
    let brokers = kit::scram_brokers();
    kit::require("Kafka's SASL/SCRAM listener", &brokers);
    let mut args = KafkaArgs::plaintext(brokers);
    args.kafka_security_protocol = SecurityProtocol::SaslPlaintext;
    args.kafka_username =
        Some(std::env::var("KAFKA_SCRAM_USERNAME").unwrap_or_else(|_| "cartstream".into()));
    args.kafka_password = Some(password.to_string());
    args
}

fn right_password() -> String {
    std::env::var("KAFKA_SCRAM_PASSWORD").unwrap_or_else(|_| "cartstream-secret".into())
}

#[tokio::test]
async fn scram_with_the_right_password_reads_metadata() {
    let args = scram(&right_password());
    let client = admin::admin_client(&args.admin().unwrap()).unwrap();
    let topics = tokio::task::spawn_blocking(move || {
        admin::partition_counts(&client, Duration::from_secs(20))
    })
    .await
    .unwrap()
    .expect("authenticated metadata request");
    assert!(topics.keys().all(|t| !t.is_empty()));
    assert!(!format!("{args:?}").contains(&right_password()));
}

#[tokio::test]
async fn scram_with_a_wrong_password_is_an_authentication_error() {
    let args = scram("definitely-wrong");
    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || args.check(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect_err("a wrong password must not authenticate")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refusal is reported at once, not after the timeout"
    );
    assert!(
        err.to_lowercase().contains("auth") || err.contains("SASL"),
        "the error should say authentication failed: {err}"
    );
    assert!(
        !err.contains("definitely-wrong"),
        "no secret in errors: {err}"
    );
}
