#!/usr/bin/env bash
# Sink benchmark: on one broker and one data set (simulated events -> cleaner -> enricher ->
# purchases.enriched), measure the passthrough baseline (consume -> produce on the processors'
# loop, at-least-once), the scylla sink (upserts/s into the local Cassandra with bounded in-flight
# writes, p50/p99 write latency) and the lake sink (events/s and input MB/s into Parquet files on
# the local filesystem), side by side, with the machine's load next to the figures (2 cores,
# other work may share them).
#
#   bash scripts/bench-sinks.sh [EVENTS]      (default 300000; needs `make up`)
#   MAX_IN_FLIGHT=256 SCYLLA_CONSISTENCY=one ... bash scripts/bench-sinks.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-300000}
PREFIX=bench-sinks-$(date +%s).
KS=bench_sinks_$(date +%s)
LAKE=$(mktemp -d /tmp/cartstream-bench-lake.XXXXXX)
bin=./target/release
export RUST_LOG=warn
IN_FLIGHT=${MAX_IN_FLIGHT:-256}

cargo build --release --quiet --bin cartstream-scylla-sink --bin cartstream-lake-sink --bin cartstream-cleaner \
  --bin cartstream-enricher --bin cartstream-passthrough --bin cartstream-producer --bin cartstream-admin
bash scripts/stack.sh up >/dev/null

metric() { # port name [label-filter] -> value summed over label sets (0 while not up)
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
    awk -v n="$2" -v f="${3:-}" '$1 ~ "^"n"({|$)" && index($1, f) {s += $2} END {printf "%.0f\n", s + 0}'
}
quantile() { # port histogram q -> upper bound of the bucket holding quantile q
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v h="$2" -v q="$3" '
    $0 ~ "^"h"_bucket" {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cnt[n] = $2 }
    END { total = cnt[n]; for (i = 1; i <= n; i++) if (cnt[i] >= q * total) { print les[i]; exit } }'
}
count() { $bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic "$1" | awk 'NR == 1 {print $2}'; }
load() { uptime | sed 's/.*load average: //'; }

PORT=9490
CHILD=
cleanup() {
  [[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null || true
  rm -rf "$LAKE"
}
trap cleanup EXIT

# start NAME -- CMD...: starts CMD with --metrics-addr on a fresh port; sets PID and MPORT.
start() {
  local name=$1; shift 2
  MPORT=$((PORT++))
  if (exec 3<>"/dev/tcp/127.0.0.1/$MPORT") 2>/dev/null; then echo "port $MPORT is taken" >&2; exit 1; fi
  "$@" --metrics-addr "127.0.0.1:$MPORT" >"/tmp/bench-sinks-$name.log" 2>&1 &
  PID=$!
  CHILD=$PID
}
# wait_for NAME METRIC WANT [FILTER] [START_METRIC]: waits until METRIC >= WANT; sets SECS, the
# time from the first record START_METRIC (default METRIC) counted to the end.
wait_for() {
  local name=$1 m=$2 want=$3 filter=${4:-} sm=${5:-$2} t0="" now v s
  while :; do
    v=$(metric "$MPORT" "$m" "$filter"); s=$(metric "$MPORT" "$sm")
    now=$(date +%s.%N)
    [[ -z $t0 && $s != 0 ]] && t0=$now
    ((v >= want)) && break
    kill -0 "$PID" 2>/dev/null || { echo "$name exited; see /tmp/bench-sinks-$name.log"; tail -5 "/tmp/bench-sinks-$name.log"; exit 1; }
    sleep 0.2
  done
  SECS=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.3f", b - a }')
}
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" || true; CHILD=; }

echo "data: $N simulated events in namespace $PREFIX (load $(load))"
$bin/cartstream-admin --topic-prefix "$PREFIX" bootstrap --partitions 6 >/dev/null
$bin/cartstream-producer --topic-prefix "$PREFIX" --count "$N" --rate 0 --metrics-addr off --progress off \
  --products 5000 --users 20000 --duplicate-ratio 0 >/dev/null
raw=$(count purchases.raw)
start cleaner -- $bin/cartstream-cleaner --topic-prefix "$PREFIX" --mode at-least-once
wait_for cleaner cartstream_processor_consumed_total "$raw"; stop
clean=$(count purchases.clean)
start enricher -- $bin/cartstream-enricher --topic-prefix "$PREFIX" --mode at-least-once
wait_for enricher cartstream_processor_consumed_total "$clean"; stop
E=$(count purchases.enriched)
echo "purchases.enriched: $E events"

start passthrough -- $bin/cartstream-passthrough --topic-prefix "$PREFIX" --group "bench-pt-$RANDOM" \
  --mode at-least-once --from purchases.enriched --to kpi.windows
wait_for passthrough cartstream_processor_consumed_total "$E"; stop
PT=$(awk -v e="$E" -v s="$SECS" 'BEGIN { printf "%.0f", e / s }')
printf '%-12s %9s ev/s                                                      load %s\n' passthrough "$PT" "$(load)"

$bin/cartstream-scylla-sink --scylla-keyspace "$KS" migrate >/dev/null
start scylla -- $bin/cartstream-scylla-sink --scylla-keyspace "$KS" run --topic-prefix "$PREFIX" \
  --topics purchases.enriched --consistency "${SCYLLA_CONSISTENCY:-one}" --max-in-flight "$IN_FLIGHT" \
  --group "bench-scylla-$RANDOM"
wait_for scylla cartstream_sink_rows_written_total "$E" "" cartstream_sink_consumed_total
p50=$(quantile "$MPORT" cartstream_sink_write_seconds 0.5); p99=$(quantile "$MPORT" cartstream_sink_write_seconds 0.99)
retries=$(metric "$MPORT" cartstream_sink_retries_total); stop
SC=$(awk -v e="$E" -v s="$SECS" 'BEGIN { printf "%.0f", e / s }')
printf '%-12s %9s upserts/s %5.2fx of passthrough  in-flight <= %s  write p50 <= %ss p99 <= %ss  retries %s  load %s\n' \
  scylla-sink "$SC" "$(awk -v a="$SC" -v b="$PT" 'BEGIN { print a / b }')" "$IN_FLIGHT" "$p50" "$p99" "$retries" "$(load)"

start lake -- $bin/cartstream-lake-sink --lake-url "$LAKE" run --topic-prefix "$PREFIX" --group "bench-lake-$RANDOM" \
  --max-file-records "${LAKE_MAX_FILE_RECORDS:-25000}" --max-file-age-secs 60
# Until every record is read, then SIGTERM, which flushes the rest: the time runs from the first
# record read to the exit, so no latency-bound wait is counted.
wait_for lake cartstream_sink_consumed_total "$E"
t_end=$(date +%s.%N)
in_bytes=$(metric "$MPORT" cartstream_sink_consumed_bytes_total)
kill -TERM "$PID"; wait "$PID" || { echo "lake-sink failed on SIGTERM; see /tmp/bench-sinks-lake.log"; exit 1; }; CHILD=
SECS=$(awk -v s="$SECS" -v a="$t_end" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", s + (b - a) }')
out_bytes=$(find "$LAKE" -name '*.parquet' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
files=$(find "$LAKE" -name '*.parquet' | wc -l)
LK=$(awk -v e="$E" -v s="$SECS" 'BEGIN { printf "%.0f", e / s }')
printf '%-12s %9s ev/s      %5.2fx of passthrough  %.1f MB/s Avro in, %.1f MB Parquet out in %s files (%.1fx smaller)  load %s\n' \
  lake-sink "$LK" "$(awk -v a="$LK" -v b="$PT" 'BEGIN { print a / b }')" \
  "$(awk -v b="$in_bytes" -v s="$SECS" 'BEGIN { print b / s / 1e6 }')" "$(awk -v b="$out_bytes" 'BEGIN { print b / 1e6 }')" \
  "$files" "$(awk -v a="$in_bytes" -v b="$out_bytes" 'BEGIN { print a / b }')" "$(load)"
# Drop the benchmark keyspace (the stack's venv has the Python driver once `stack.sh smoke` ran).
if .stack/venv/bin/python -c "import cassandra" 2>/dev/null; then
  .stack/venv/bin/python -c "from cassandra.cluster import Cluster; Cluster(['127.0.0.1']).connect().execute('DROP KEYSPACE IF EXISTS $KS')" &&
    echo "(dropped keyspace $KS)"
else
  echo "(keyspace $KS is left behind: DROP KEYSPACE $KS to remove it)"
fi
echo "(topics $PREFIX* are left for inspection; 2-core box: the figures share the CPU with Kafka, Cassandra and whatever else runs: see the load column)"
