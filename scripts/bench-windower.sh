#!/usr/bin/env bash
# Windower benchmark: on one broker and one data set of enriched events over >= 100k distinct
# products, measure the passthrough (enriched -> scratch topic, the machine's consume->produce
# limit), the windower with tumbling windows (slide = size) and with hopping windows of the same
# size and slide = size/60, all exactly-once. Prints input events/s, the ratio to the passthrough,
# window results written, peak RSS, and the load average (the machine has 2 cores and other
# builds may be running: read the figures with the load next to them).
#
#   bash scripts/bench-windower.sh [EVENTS] [PRODUCTS] [SIZE_SECS]
#       defaults 400000 events, 120000 products (uniform: every product is a key), 600 s windows
#       (spans longer than 14 h of event time are not supported by the generator)
#
# The events come from a generated REES46-style CSV (uniform product ids, event time advancing
# evenly over 2 x SIZE), replayed by cartstream-producer and run through the cleaner and enricher
# once (not measured); BENCH_PREFIX=<namespace of an earlier run> reuses its data. The windower's rate is input events over the time from its first consumed
# event until its second stage has consumed every partial the first one wrote.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-400000}
PRODUCTS=${2:-120000}
SIZE=${3:-600}
SLIDE_SMALL=$((SIZE / 60))
PREFIX=${BENCH_PREFIX:-bench-win-$(date +%s).}
bin=./target/release
export RUST_LOG=warn
tmp=$(mktemp -d)
CHILD=
trap '[[ -n $CHILD ]] && kill -TERM $CHILD 2>/dev/null || true; rm -rf "$tmp"' EXIT

cargo build --release --quiet -p cartstream-processors -p cartstream-admin -p cartstream-producer --bins
bash scripts/stack.sh up >/dev/null

if [[ -z ${BENCH_PREFIX:-} ]]; then
echo "data: $N events over $PRODUCTS products, event time spread over $((2 * SIZE)) s, namespace $PREFIX"
awk -v n="$N" -v p="$PRODUCTS" -v span=$((2 * SIZE)) 'BEGIN {
  srand(42);
  print "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
  split("view view view view view view cart cart remove_from_cart purchase", types, " ");
  for (i = 0; i < n; i++) {
    t = 36000 + int(i * span / n);                # seconds of 2026-11-01 from 10:00:00 UTC
    prod = 1 + int(rand() * p); user = 1 + int(rand() * 200000);
    ty = types[1 + int(rand() * 10)];
    printf "2026-11-01 %02d:%02d:%02d UTC,%s,%d,%d,cat.%d,brand%d,%.2f,%d,s%d\n", int(t / 3600), int(t / 60) % 60, t % 60, ty, prod,
      prod % 500, prod % 500, prod % 2000, 1 + (prod % 997) / 10, user, user * 7 + int(i / 5000);
  }
}' >"$tmp/events.csv"
$bin/cartstream-admin --topic-prefix "$PREFIX" bootstrap --partitions 6 >/dev/null
$bin/cartstream-producer replay --file "$tmp/events.csv" --topic-prefix "$PREFIX" --metrics-addr off \
  --progress off >/dev/null

fi

metric() { # port name [label filter] -> value summed over matching label sets
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
    awk -v n="$2" -v f="${3:-}" '$1 ~ "^"n"({|$)" && index($1, f) {s += $2} END {print s + 0}'
}
count() { $bin/cartstream-admin --topic-prefix "" inspect --topic "$1" | awk 'NR == 1 {print $2}'; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

PORT=9490
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start() { # name -- cmd...: starts cmd with a metrics port; sets PID and MPORT
  local name=$1; shift 2
  MPORT=$((PORT++))
  port_free $MPORT || { echo "port $MPORT is taken; stop what listens there" >&2; exit 1; }
  "$@" --topic-prefix "$PREFIX" --metrics-addr "127.0.0.1:$MPORT" >"/tmp/bench-win-$name.log" 2>&1 &
  PID=$!
  CHILD=$PID
}
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" || true; CHILD=; }
wait_consumed() { # port want [stage]
  until (($(metric "$1" cartstream_processor_consumed_total "${3:-}") >= $2)); do
    kill -0 "$PID" 2>/dev/null || { echo "process exited; see the log in /tmp" >&2; exit 1; }
    sleep 0.2
  done
}

if [[ -z ${BENCH_PREFIX:-} ]]; then
# Prepare the enriched topic (not measured).
raw=$(count "${PREFIX}purchases.raw")
start cleaner -- $bin/cartstream-cleaner --instance-id bench
wait_consumed $MPORT "$raw"; stop
clean=$(count "${PREFIX}purchases.clean")
start enricher -- $bin/cartstream-enricher --instance-id bench
wait_consumed $MPORT "$clean"; stop
fi
enriched=$(count "${PREFIX}purchases.enriched")
echo "enriched events: $enriched"
printf '%-26s %10s %8s %16s %12s %10s  %s\n' run "events/s" "x pass" "window results" "peak RSS MB" "seconds" "load (1/5/15 min)"

row() { # name rate base results rss secs
  printf '%-26s %10s %8.2f %16s %12s %10s  %s\n' "$1" "$2" "$(awk -v r="$2" -v b="$3" 'BEGIN { print r / b }')" \
    "$4" "$5" "$6" "$(awk '{print $1, $2, $3}' /proc/loadavg)"
}

# Passthrough of the enriched topic.
start passthrough -- $bin/cartstream-passthrough --from purchases.enriched --to alerts.raised \
  --group "${PREFIX}bench-pass-$RANDOM" --instance-id bench
until (($(metric $MPORT cartstream_processor_consumed_total) > 0)); do sleep 0.05; done
t0=$(date +%s.%N); first=$(metric $MPORT cartstream_processor_consumed_total)
wait_consumed $MPORT "$enriched"
t1=$(date +%s.%N)
rss=$(peak_rss_mb $PID); stop
PASS=$(awk -v n="$enriched" -v f="$first" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (n - f) / (b - a) }')
row passthrough "$PASS" "$PASS" - "$rss" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"

declare -A RATE
windower() { # name slide_secs
  local name=$1 slide=$2 group="${PREFIX}bench-$1-$RANDOM"
  start "$name" -- $bin/cartstream-windower --group "$group" --instance-id bench --window-size "${SIZE}s" \
    --window-slide "${slide}s" --grace 10s --idle-timeout 2s
  until (($(metric $MPORT cartstream_processor_consumed_total 'stage="windower-pre"') > 0)); do sleep 0.05; done
  local t0 t1 first partials
  t0=$(date +%s.%N); first=$(metric $MPORT cartstream_processor_consumed_total 'stage="windower-pre"')
  wait_consumed $MPORT "$enriched" 'stage="windower-pre"'
  sleep 0.5 # the last batch's partials commit with it; count them then
  partials=$(count "$group-pre.repartition")
  wait_consumed $MPORT "$partials" 'stage="windower"'
  t1=$(date +%s.%N)
  local results rss
  results=$(metric $MPORT cartstream_windower_windows_emitted_total)
  rss=$(peak_rss_mb $PID)
  stop
  RATE[$name]=$(awk -v n="$enriched" -v f="$first" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (n - f) / (b - a) }')
  row "$name" "${RATE[$name]}" "$PASS" "$results" "$rss" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
}
windower "tumbling-${SIZE}s" "$SIZE"
windower "hopping-${SIZE}s-${SLIDE_SMALL}s" "$SLIDE_SMALL"
echo "hopping (slide = size/60) vs tumbling: $(awk -v h="${RATE[hopping-${SIZE}s-${SLIDE_SMALL}s]}" -v t="${RATE[tumbling-${SIZE}s]}" 'BEGIN { printf "%+.1f%%", (h / t - 1) * 100 }') events/s"
echo "(window results: final windows emitted while the run lasted; the last ones close after the idle timeout)"
