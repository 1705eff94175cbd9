#!/usr/bin/env bash
# One whole cartstream pipeline as background processes on the local stack (scripts/services.sh).
#
#   scripts/pipeline.sh start    topics + schemas (bootstrap), CQL tables (migrate), then every service:
#                                cleaner, enricher, windower, sessionizer, detector, scylla-sink,
#                                lake-sink, model-service. Already running services are left alone.
#   scripts/pipeline.sh stop     SIGTERM them (each flushes and commits), KILL after 30 s
#   scripts/pipeline.sh status   one line per service
#   scripts/pipeline.sh wait     until every consumer of the pipeline has caught up (lag 0), or 120 s
#
# Settings (environment):
#   TOPIC_PREFIX     topic namespace of the pipeline                    default "" (the main pipeline)
#   NAME             service name prefix (logs .stack/services/<NAME><service>.log)   default ""
#   PORT_BASE        first metrics port; services take PORT_BASE..PORT_BASE+7, the
#                    model service's forecast API PORT_BASE+9                          default 9201
#   MODEL_PERIOD_MS  the model's base period (3600000 = hourly; the demo and tests, whose
#                    simulated clock runs 60x, use 60000)                              default 3600000
#   MODEL_WINDOW_SIZE_MS  the kpi windows the model reads (the windower's WINDOW_SIZE)  default 60000
#   SCYLLA_KEYSPACE  keyspace of the real-time tables                   default cartstream
#   LAKE_URL         history lake (file:// or s3://)                    default file://<repo>/.stack/lake
#                    Consumer groups are the services' defaults: <TOPIC_PREFIX>cartstream-<service>.
#   MODEL_URL        model registry (file:// or s3://)                  default file://<repo>/.stack/models
#   SOURCE_TOPIC_PREFIX  namespace of purchases.raw and the catalog topics when it differs (replay)
#   BIN              where the binaries are                             default ./target/debug
#   PROFILE_ARGS     extra flags for every processor (e.g. "--batch-linger-ms 50")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
: "${TOPIC_PREFIX:=}" "${NAME:=}" "${PORT_BASE:=9201}" "${SCYLLA_KEYSPACE:=cartstream}"
: "${LAKE_URL:=file://$ROOT/.stack/lake}" "${MODEL_URL:=file://$ROOT/.stack/models}"
: "${BIN:=./target/debug}" "${MODEL_PERIOD_MS:=3600000}" "${MODEL_WINDOW_SIZE_MS:=60000}" "${PROFILE_ARGS:=}"
export TOPIC_PREFIX SCYLLA_KEYSPACE

SERVICES=(cleaner enricher windower sessionizer detector scylla-sink lake-sink model-service)
port_of() { local i; for i in "${!SERVICES[@]}"; do [[ ${SERVICES[$i]} == "$1" ]] && echo $((PORT_BASE + i)); done; }

start_service() { # service command...
  local svc=$1; shift
  bash scripts/services.sh start "$NAME$svc" "$(port_of "$svc")" -- "$@"
}

start() {
  for svc in "${SERVICES[@]}"; do
    local exe=cartstream-$svc
    [[ -x $BIN/$exe ]] || { echo "pipeline: $BIN/$exe is not built (cargo build --workspace --bins)" >&2; exit 1; }
  done
  "$BIN/cartstream-admin" bootstrap >/dev/null
  "$BIN/cartstream-scylla-sink" migrate >/dev/null
  local id=${NAME:-local}0
  # shellcheck disable=SC2086 # PROFILE_ARGS is a list of flags
  {
    start_service cleaner "$BIN/cartstream-cleaner" --instance-id "$id" $PROFILE_ARGS
    start_service enricher "$BIN/cartstream-enricher" --instance-id "$id" $PROFILE_ARGS
    start_service windower "$BIN/cartstream-windower" --instance-id "$id" $PROFILE_ARGS
    start_service sessionizer "$BIN/cartstream-sessionizer" --instance-id "$id" $PROFILE_ARGS
    start_service detector "$BIN/cartstream-detector" --instance-id "$id" $PROFILE_ARGS
  }
  start_service scylla-sink "$BIN/cartstream-scylla-sink" run --instance-id "$id"
  start_service lake-sink "$BIN/cartstream-lake-sink" --lake-url "$LAKE_URL" run --instance-id "$id"
  start_service model-service "$BIN/cartstream-model-service" run --model-store "$MODEL_URL" \
    --http-addr "127.0.0.1:$((PORT_BASE + 9))" --period-ms "$MODEL_PERIOD_MS" --window-size-ms "$MODEL_WINDOW_SIZE_MS"
}

# Sum of every lag gauge a service exports (processors and sinks), or "down".
lag() {
  curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | awk '/^cartstream_(processor_consumer_lag_records|sink_commit_lag_records)/ {s += $2} END {print s + 0}' \
    || echo down
}

wait_caught_up() {
  sleep 6 # lag gauges are refreshed every 5 s
  local end=$((SECONDS + ${WAIT_SECS:-120})) svc behind
  while ((SECONDS < end)); do
    behind=()
    for svc in cleaner enricher windower sessionizer detector scylla-sink lake-sink; do
      [[ $(lag "$(port_of "$svc")") == 0 ]] || behind+=("$svc")
    done
    ((${#behind[@]} == 0)) && { echo "pipeline: every consumer caught up"; return 0; }
    sleep 1
  done
  echo "pipeline: still behind after ${WAIT_SECS:-120} s: ${behind[*]}" >&2
  return 1
}

case ${1:-} in
  start) start ;;
  stop) bash scripts/services.sh stop "${SERVICES[@]/#/$NAME}" ;;
  status) bash scripts/services.sh status "${SERVICES[@]/#/$NAME}" ;;
  wait) wait_caught_up ;;
  port) [[ $2 == model-api ]] && echo $((PORT_BASE + 9)) || port_of "$2" ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac
