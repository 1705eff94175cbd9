//! Shared helpers of the producer's integration tests: run the real binary in a test namespace and
//! read topics back.
#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use cartstream_kafka::{read, KafkaArgs, Topic, TopicNames};
use cartstream_testkit as kit;
use rdkafka::message::OwnedMessage;

/// A bootstrapped namespace (topics + schemas) that deletes its topics when dropped... explicitly.
pub struct Namespace {
    pub prefix: String,
    pub names: TopicNames,
    pub kafka: KafkaArgs,
    pub registry: std::sync::Arc<cartstream_events::Registry>,
}

impl Namespace {
    pub async fn new(tag: &str) -> Self {
        let kafka = kit::kafka();
        let registry = kit::registry();
        let prefix = kit::unique(tag);
        let names = TopicNames::with_prefix(&prefix);
        cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
            .await
            .expect("bootstrap");
        Namespace {
            prefix,
            names,
            kafka,
            registry,
        }
    }

    /// Runs `cartstream-producer <args> --topic-prefix <prefix>` and returns its output; panics
    /// with stdout and stderr when it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.run_unchecked(args);
        assert!(
            out.status.success(),
            "cartstream-producer {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn run_unchecked(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cartstream-producer"));
        let first_is_sub = args
            .first()
            .is_some_and(|a| ["simulate", "replay", "load-catalog"].contains(a));
        let (sub, rest) = if first_is_sub {
            (&args[..1], &args[1..])
        } else {
            (&args[..0], args)
        };
        cmd.args(sub)
            .args(["--topic-prefix", &self.prefix])
            .args(["--brokers", &kit::brokers()])
            .args(["--schema-registry-url", &kit::registry_url()])
            .args(["--metrics-addr", "off", "--progress", "off"])
            .args(rest)
            .env("RUST_LOG", "warn");
        cmd.output().expect("runs cartstream-producer")
    }

    pub fn read(&self, topic: Topic) -> Vec<OwnedMessage> {
        let config = self.kafka.consumer("it-producer-reader").expect("config");
        read::read_to_end(&config, &self.names.name(topic), Duration::from_secs(60))
            .expect("reads the topic")
    }

    pub async fn cleanup(&self) {
        kit::delete_topics_with_prefix(&self.kafka, &self.prefix).await;
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temporary file path unique to this test run.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cartstream-producer-it-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}
