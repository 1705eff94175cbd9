#!/usr/bin/env bash
# Producer throughput against Kafka's own producer perf tool, in one go on the same broker.
#
# 1. sizes a cartstream record (mean encoded Avro size of the simulator's events, by a dry run);
# 2. runs org.apache.kafka.tools.ProducerPerformance with that record size and the same count and
#    producer settings (acks=all, idempotence, lz4, linger.ms=5, 1 MiB batches) into a fresh topic;
# 3. runs the release cartstream-producer (--rate 0: simulate, Avro-encode, key by session, send)
#    into a fresh raw topic with the same partitions;
# 4. prints both records/s and the ratio (aim: 0.8 or better).
#
# Usage: bash scripts/bench-producer.sh [RECORDS]   (env: BENCH_PARTITIONS, KAFKA_BROKERS)
# The bench topics (prefix bench-<time>.) are deleted at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-${BENCH_RECORDS:-2000000}}
PARTITIONS=${BENCH_PARTITIONS:-6}
BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
PREFIX="bench-$(date +%s)."
RESULTS=target/bench-producer
mkdir -p "$RESULTS"

step() { printf '\n==> %s\n' "$*"; }
tool() { bash scripts/stack.sh kafka-tool "$@"; }

step "release build"
cargo build --release --quiet -p cartstream-producer -p cartstream-admin
bin=./target/release

step "record size: mean encoded size of the simulator's events"
size=$(RUST_LOG=warn $bin/cartstream-producer --dry-run --count 200000 --rate 0 --skip-dimensions \
  --metrics-addr off --progress off | sed -n 's/.*mean record size \([0-9]*\) bytes.*/\1/p')
[[ -n $size ]] || { echo "could not size a record" >&2; exit 1; }
echo "record size $size bytes, $N records, $PARTITIONS partitions"

cleanup() {
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --delete \
    --topic "${PREFIX//./\\.}.*" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "topics"
KAFKA_BROKERS="$BROKERS" TOPIC_PREFIX="$PREFIX" $bin/cartstream-admin bootstrap --partitions "$PARTITIONS" >/dev/null
tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create \
  --topic "${PREFIX}perf.raw" --partitions "$PARTITIONS" --replication-factor 1 >/dev/null

step "Kafka ProducerPerformance (raw bytes)"
tool org.apache.kafka.tools.ProducerPerformance --topic "${PREFIX}perf.raw" --num-records "$N" \
  --record-size "$size" --throughput -1 --producer-props bootstrap.servers="$BROKERS" acks=all \
  enable.idempotence=true compression.type=lz4 linger.ms=5 batch.size=1048576 \
  | tee "$RESULTS/java.txt"
java_rate=$(tail -n 1 "$RESULTS/java.txt" | sed -n 's/.* records sent, \([0-9.]*\) records\/sec.*/\1/p')

step "cartstream-producer (simulate + Avro + send, --rate 0)"
$bin/cartstream-producer --brokers "$BROKERS" --topic-prefix "$PREFIX" --count "$N" --rate 0 \
  --skip-dimensions --metrics-addr off --progress off | tee "$RESULTS/cartstream.txt"
rust_rate=$(sed -n 's/.*(\([0-9]*\) records\/s).*/\1/p' "$RESULTS/cartstream.txt" | tail -n 1)

[[ -n $java_rate && -n $rust_rate ]] || { echo "could not read both rates" >&2; exit 1; }
step "result"
awk -v j="$java_rate" -v r="$rust_rate" -v n="$N" -v s="$size" 'BEGIN {
  printf "records %d of %d bytes\n", n, s
  printf "ProducerPerformance   %10.0f records/s\n", j
  printf "cartstream-producer   %10.0f records/s\n", r
  printf "ratio                 %10.2f (aim >= 0.80)\n", r / j
}' | tee "$RESULTS/result.txt"
