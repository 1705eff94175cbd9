//! `Processor::on_tick` on the real broker: output emitted by ticks is committed exactly once.
//!
//! A processor holds every input back and releases it from `on_tick` only once it is 300 ms old,
//! so most outputs leave in tick-only transactions (empty batches, after the input stopped), and
//! every third tick that emits anything fails after writing its output (the transaction is
//! aborted, the processor rolls back, the loop retries). The output topic, read committed, must
//! hold every input exactly once.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartstream_kafka::{read, Topic, TopicNames};
use cartstream_runtime::{Health, Shutdown};
use cartstream_stream::{run, Input, LoopArgs, Mode, Output, ProcessError, Processor, Topology};
use cartstream_testkit as kit;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

#[derive(Default)]
struct Counters {
    /// Records emitted by a tick of an empty batch (own transaction).
    idle_emitted: AtomicU64,
    /// Ticks failed on purpose after writing their output.
    failed_ticks: AtomicU64,
}

struct Holder {
    out_topic: String,
    held: Vec<(Vec<u8>, Instant)>,
    committed: Vec<(Vec<u8>, Instant)>,
    processed_since_tick: usize,
    emitting_ticks: u64,
    counters: Arc<Counters>,
}

impl Processor for Holder {
    async fn on_assigned(&mut self, _: &[(String, i32)]) -> anyhow::Result<()> {
        Ok(())
    }

    fn on_revoked(&mut self, _: &[(String, i32)]) {}

    async fn process(&mut self, input: &Input<'_>, _: &mut Output) -> Result<(), ProcessError> {
        self.held
            .push((input.payload.unwrap().to_vec(), Instant::now()));
        self.processed_since_tick += 1;
        Ok(())
    }

    async fn on_tick(&mut self, out: &mut Output) -> Result<(), ProcessError> {
        let empty_batch = std::mem::take(&mut self.processed_since_tick) == 0;
        let due = Duration::from_millis(300);
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, t)| t.elapsed() >= due);
        self.held = keep;
        if ready.is_empty() {
            return Ok(());
        }
        for (payload, _) in &ready {
            out.send(&self.out_topic, Some(payload), payload.clone());
        }
        self.emitting_ticks += 1;
        if self.emitting_ticks.is_multiple_of(3) {
            self.counters.failed_ticks.fetch_add(1, Ordering::Relaxed);
            return Err(ProcessError::Transient(anyhow::anyhow!(
                "injected failure after the tick wrote {} records",
                ready.len()
            )));
        }
        if empty_batch {
            self.counters
                .idle_emitted
                .fetch_add(ready.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit(&mut self) {
        self.committed.clone_from(&self.held);
    }

    fn rollback(&mut self) {
        self.held.clone_from(&self.committed);
        self.processed_since_tick = 0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_output_is_committed_exactly_once() {
    let kafka = kit::kafka();
    let registry = kit::registry();
    let prefix = kit::unique("tick");
    let names = TopicNames::with_prefix(&prefix);
    cartstream_admin::bootstrap(&kafka, &registry, &names, 3, 1)
        .await
        .unwrap();
    // Reuse two catalog topics of the namespace as input and output.
    let input = names.name(Topic::Clean);
    let output = names.name(Topic::Enriched);
    let n = 3_000usize;
    // The input trickles in while the loop runs, so ticks emit again and again.
    let producing = {
        let kafka = kafka.clone();
        let input = input.clone();
        tokio::spawn(async move {
            let producer: FutureProducer = kafka.producer().unwrap().create().unwrap();
            for i in 0..n {
                let v = format!("r{i}");
                producer
                    .send(
                        FutureRecord::<str, str>::to(&input).key(&v).payload(&v),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };

    let counters = Arc::new(Counters::default());
    let holder = Holder {
        out_topic: output.clone(),
        held: Vec::new(),
        committed: Vec::new(),
        processed_since_tick: 0,
        emitting_ticks: 0,
        counters: counters.clone(),
    };
    let shutdown = Shutdown::new();
    let health = Health::new("tick-test");
    let args = LoopArgs {
        group: None,
        mode: Mode::ExactlyOnce,
        batch_size: 400,
        batch_linger_ms: 50,
        instance_id: Some("t0".into()),
    };
    let group = format!("{prefix}tick");
    let inputs = [input.clone()];
    let dlq = names.name(Topic::DeadLetters);
    let dlq_subject = names.subject(Topic::DeadLetters);
    let stopper = {
        let shutdown = shutdown.clone();
        let kafka = kafka.clone();
        let output = output.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (k, t) = (kafka.clone(), output.clone());
                let got = tokio::task::spawn_blocking(move || {
                    read::read_to_end(
                        &k.consumer("it-verify").unwrap(),
                        &t,
                        Duration::from_secs(30),
                    )
                    .unwrap()
                    .len()
                })
                .await
                .unwrap();
                if got >= n || Instant::now() > deadline {
                    // Leave time for a wrong extra commit to show.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    shutdown.trigger();
                    return;
                }
            }
        })
    };
    run(
        Topology {
            stage: "tick-test",
            group: &group,
            inputs: &inputs,
            dead_letter_topic: &dlq,
            dead_letter_subject: &dlq_subject,
        },
        &args,
        &kafka,
        &registry,
        holder,
        &shutdown,
        &health,
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    producing.await.unwrap();

    let msgs = read::read_to_end(
        &kafka.consumer("it-verify").unwrap(),
        &output,
        Duration::from_secs(30),
    )
    .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &msgs {
        *seen
            .entry(String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "emitted twice: {twice:?}");
    assert_eq!(seen.len(), n, "every input released by a tick");
    assert!((0..n).all(|i| seen.contains_key(&format!("r{i}"))));
    let failed = counters.failed_ticks.load(Ordering::Relaxed);
    let idle = counters.idle_emitted.load(Ordering::Relaxed);
    assert!(failed > 0, "some ticks failed after writing");
    assert!(idle > 0, "some outputs left in tick-only transactions");
    eprintln!("tick test: {n} records, {failed} failed ticks, {idle} emitted by idle ticks");
    kit::delete_topics_with_prefix(&kafka, &prefix).await;
}
