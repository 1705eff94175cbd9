#!/usr/bin/env bash
# `make demo`: the pipeline end to end on the local stack. Starts the stack if it is not running,
# creates topics, schemas and tables, simulates shoppers, reads the events back through the schema
# registry and prints a summary with where to look next. The stack keeps running (`make down`).
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

step "simulating shoppers: $EVENTS events at $RATE/s"
$bin/cartstream-producer --count "$EVENTS" --rate "$RATE" --products 2000 --users 5000 --metrics-addr off

step "reading purchases.raw back through the schema registry"
$bin/cartstream-admin inspect --topic purchases.raw --samples 2

cat <<MSG

==> done in $((SECONDS - started)) s. Where to look:
  topics and schemas   $bin/cartstream-admin topics
  any topic            $bin/cartstream-admin inspect --topic catalog.products --samples 3
  registry (Confluent) http://127.0.0.1:8081/apis/ccompat/v7/subjects
  Prometheus           http://127.0.0.1:9090  (add targets in .stack/prometheus/targets/*.json)
  CQL tables           keyspace cartstream on 127.0.0.1:9042
  Kafka CLI tools      bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --describe
  stack health         make status        stop it: make down
MSG
