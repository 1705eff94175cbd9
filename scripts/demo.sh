#!/usr/bin/env bash
# `make demo`: the pipeline end to end on the local stack. Starts the stack if it is not running,
# creates topics, schemas and tables, starts the cleaner and enricher, simulates shoppers (with
# duplicates and malformed records), reads the results back through the schema
# registry and prints a summary with where to look next. The stack and the services keep running
# (`make down` stops them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EVENTS=${DEMO_EVENTS:-5000}
RATE=${DEMO_RATE:-2500}
started=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

step "local stack (installs what is missing on first run)"
bash scripts/stack.sh up

step "building cartstream"
cargo build --workspace --bins --quiet

bin=./target/debug
step "topics and schemas"
$bin/cartstream-admin bootstrap
step "CQL tables"
$bin/cartstream-scylla-sink migrate

step "starting the cleaner and the enricher (exactly-once processors)"
bash scripts/services.sh start cleaner 9201 -- $bin/cartstream-cleaner --instance-id demo-0
bash scripts/services.sh start enricher 9202 -- $bin/cartstream-enricher --instance-id demo-0

step "simulating shoppers: $EVENTS events at $RATE/s, with 2% duplicates and 1% malformed records"
$bin/cartstream-producer --count "$EVENTS" --rate "$RATE" --products 2000 --users 5000 \
  --duplicate-ratio 0.02 --malformed-ratio 0.01 --metrics-addr off --progress lines

step "waiting for the processors to catch up"
lag() { curl -fsS "http://127.0.0.1:$1/metrics" | awk '/^cartstream_processor_consumer_lag_records/ {s += $2} END {print s + 0}'; }
sleep 6   # lag is reported every 5 s
for _ in $(seq 60); do
  [[ $(lag 9201) == 0 && $(lag 9202) == 0 ]] && break
  sleep 1
done

step "what went through (read back through the schema registry)"
$bin/cartstream-admin inspect --topic purchases.raw
$bin/cartstream-admin inspect --topic purchases.enriched --samples 1
$bin/cartstream-admin inspect --topic purchases.dlq
curl -fsS http://127.0.0.1:9201/metrics | grep -E '^cartstream_processor_(consumed|deduplicated|dead_lettered)_total' || true

cat <<MSG

==> done in $((SECONDS - started)) s. Where to look:
  topics and schemas   $bin/cartstream-admin topics
  any topic            $bin/cartstream-admin inspect --topic catalog.products --samples 3
  registry (Confluent) http://127.0.0.1:8081/apis/ccompat/v7/subjects
  services             bash scripts/services.sh status   (logs in .stack/services/)
  processor metrics    http://127.0.0.1:9201/metrics (cleaner), http://127.0.0.1:9202/metrics (enricher)
  Prometheus           http://127.0.0.1:9090  (scrapes the services; try cartstream_processor_consumed_total)
  CQL tables           keyspace cartstream on 127.0.0.1:9042
  Kafka CLI tools      bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --describe
  stack health         make status        stop everything: make down
MSG
