//! Helpers for integration tests against the real local stack (`make up`).
//!
//! Endpoints come from the same environment variables the services read (`KAFKA_BROKERS`,
//! `SCHEMA_REGISTRY_URL`, `SCYLLA_URI`), defaulting to the local stack. Every test works in its
//! own namespace from [`unique`], so tests run in parallel and leave nothing shared behind.
//! A test that cannot reach the stack fails with a message saying how to start it; it does not
//! skip silently.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cartstream_events::{Registry, RegistryConfig};
use cartstream_kafka::admin;
use cartstream_kafka::KafkaArgs;
use rdkafka::message::OwnedMessage;

/// Kills the child process when dropped, so a failing assertion leaves no service running.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Points a cartstream binary started by a test at the local stack (`KAFKA_BROKERS`,
/// `SCHEMA_REGISTRY_URL`, `SCYLLA_URI`) with the tests' log level (`CARTSTREAM_IT_LOG`, default
/// `warn`): its stdout discarded, its stderr the test's.
pub trait StackEnv {
    fn stack_env(&mut self) -> &mut Self;
}

impl StackEnv for Command {
    fn stack_env(&mut self) -> &mut Self {
        self.env("KAFKA_BROKERS", brokers())
            .env("SCHEMA_REGISTRY_URL", registry_url())
            .env("SCYLLA_URI", scylla_uri())
            .env("RUST_LOG", env_or("CARTSTREAM_IT_LOG", "warn"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
    }
}

/// Every data record of `topic` (control records left out) read to its end by a reader of the
/// test's own.
pub fn read_all(kafka: &KafkaArgs, topic: &str) -> Vec<OwnedMessage> {
    cartstream_kafka::read::read_to_end(
        &kafka.consumer("it-verify").expect("consumer config"),
        topic,
        Duration::from_secs(120),
    )
    .expect("reading a topic to its end")
}

/// A free TCP port on loopback (for a service's metrics or API address).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Every sample of the Prometheus text exposition at `url`, as `name{labels}` -> value; empty
/// when the endpoint does not answer (a service still starting).
pub async fn scrape_metrics(url: &str) -> HashMap<String, f64> {
    let Ok(r) = reqwest::get(url).await else {
        return HashMap::new();
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of every sample of metric `name` in a scrape (all its label sets).
pub fn metric_total(m: &HashMap<String, f64>, name: &str) -> f64 {
    let labelled = format!("{name}{{");
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&labelled))
        .map(|(_, v)| v)
        .sum()
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

pub fn brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

pub fn scram_brokers() -> String {
    env_or("KAFKA_SCRAM_BROKERS", "127.0.0.1:9094")
}

pub fn registry_url() -> String {
    env_or(
        "SCHEMA_REGISTRY_URL",
        "http://127.0.0.1:8081/apis/ccompat/v7",
    )
}

pub fn scylla_uri() -> String {
    env_or("SCYLLA_URI", "127.0.0.1:9042")
}

/// Panics with a helpful message unless `host:port` accepts connections.
pub fn require(what: &str, addr: &str) {
    let reachable = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{what} is not reachable at {addr}: start the local stack with `make up` (or point the \
         environment variables at your own)"
    );
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

pub fn kafka() -> KafkaArgs {
    let brokers = brokers();
    require("Kafka", brokers.split(',').next().unwrap_or_default());
    KafkaArgs::plaintext(brokers)
}

pub fn registry() -> Arc<Registry> {
    let url = registry_url();
    require("the schema registry", &host_port(&url));
    Arc::new(Registry::new(RegistryConfig::new(url)).expect("registry client"))
}

/// A fresh namespace such as `it-3fa2b1c0.` for topic names; `unique_ident` gives one usable as
/// a keyspace.
pub fn unique(tag: &str) -> String {
    format!(
        "it-{tag}-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub fn unique_ident(tag: &str) -> String {
    format!(
        "it_{tag}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deletes every topic whose name starts with `prefix`.
pub async fn delete_topics_with_prefix(kafka: &KafkaArgs, prefix: &str) {
    assert!(
        prefix.starts_with("it-"),
        "only test namespaces are deleted"
    );
    let admin = admin::admin_client(&kafka.admin().expect("config")).expect("admin client");
    let names: Vec<String> = admin::partition_counts(&admin, Duration::from_secs(10))
        .expect("metadata")
        .into_keys()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin::delete_topics(&admin, &refs, Duration::from_secs(30))
        .await
        .expect("deleting test topics");
}
