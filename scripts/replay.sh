#!/usr/bin/env bash
# Kappa replay: rebuild derived state from the topics.
#
#   scripts/replay.sh generation GEN
#       Start a new generation of the whole pipeline next to the running one: topics GEN.* (derived
#       topics only; it reads the main namespace's purchases.raw and catalog topics), new consumer
#       groups, keyspace cartstream_GEN, lake .stack/lake-GEN, models .stack/models-GEN, metrics ports
#       9301..9308. Waits until it has caught up with the raw topic, prints the replay rate, and says
#       how to switch readers over. Stop it with: NAME=GEN- bash scripts/pipeline.sh stop
#
#   scripts/replay.sh reset SERVICE [TIME]
#       Rewind one sink (scylla-sink or lake-sink) of the main pipeline to the earliest offset or to
#       TIME (RFC 3339): stops it, moves its group's offsets, starts it again. Sinks are idempotent
#       (natural-key upserts, offset-named files), so rewinding rewrites the same rows and files.
#       Stateful processors are rebuilt with a generation instead: rewinding one alone would replay
#       input into state that already saw it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${BIN:-./target/debug}

metric_sum() { # port regex
  curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v re="$2" '$0 ~ re {s += $NF} END {printf "%d", s}'
}

generation() {
  local gen=${1:?generation name, e.g. g2}
  [[ $gen =~ ^[a-z0-9]+$ ]] || { echo "replay: generation name must be lowercase letters and digits" >&2; exit 2; }
  local base=${TOPIC_PREFIX:-}
  export TOPIC_PREFIX="$base$gen." SOURCE_TOPIC_PREFIX="$base" NAME="$gen-" PORT_BASE=${PORT_BASE:-9301}
  export SCYLLA_KEYSPACE="cartstream_$gen" LAKE_URL="file://$ROOT/.stack/lake-$gen" MODEL_URL="file://$ROOT/.stack/models-$gen"
  local raw
  raw=$("$BIN/cartstream-admin" --topic-prefix "$base" inspect --topic purchases.raw --timeout-secs 300 | awk 'NR==1 {print $2}')
  echo "replay: generation $gen rebuilds from ${base}purchases.raw ($raw records)"
  local started=$SECONDS
  bash scripts/pipeline.sh start
  WAIT_SECS=${WAIT_SECS:-1800} bash scripts/pipeline.sh wait
  local secs=$((SECONDS - started)); ((secs > 0)) || secs=1
  local cleaned
  cleaned=$(metric_sum "$(bash scripts/pipeline.sh port cleaner)" '^cartstream_processor_consumed_total')
  cat <<MSG
replay: generation $gen caught up in $secs s: $cleaned raw records re-processed, $((cleaned / secs)) records/s
        (the live pipeline processes at the producers' rate; see the pipeline-health dashboard).
switch readers over:
  CQL readers       keyspace cartstream_$gen (was cartstream)
  lake readers      ${LAKE_URL#file://}
  topic consumers   ${TOPIC_PREFIX}kpi.windows, ${TOPIC_PREFIX}sessions.closed, ${TOPIC_PREFIX}alerts.raised
  then stop the old generation (bash scripts/pipeline.sh stop) or this one (NAME=$gen- bash scripts/pipeline.sh stop)
MSG
}

reset() {
  local svc=${1:?scylla-sink or lake-sink} to=${2:-earliest} topics=()
  case $svc in
    scylla-sink) topics=(purchases.enriched kpi.windows sessions.closed alerts.raised) ;;
    lake-sink) topics=(purchases.enriched) ;;
    *) echo "replay: reset rewinds a sink (scylla-sink, lake-sink); rebuild processors with: scripts/replay.sh generation GEN" >&2; exit 2 ;;
  esac
  local group="${TOPIC_PREFIX:-}cartstream-$svc" args=()
  for t in "${topics[@]}"; do args+=(--topic "$t"); done
  bash scripts/services.sh stop "${NAME:-}$svc"
  "$BIN/cartstream-admin" reset-offsets --group "$group" "${args[@]}" --to "$to" --execute
  echo "replay: $svc rewound to $to; starting it again"
  # pipeline.sh start leaves the running services alone and starts the stopped one.
  bash scripts/pipeline.sh start
}

case ${1:-} in
  generation) shift; generation "$@" ;;
  reset) shift; reset "$@" ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
