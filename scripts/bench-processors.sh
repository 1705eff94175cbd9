#!/usr/bin/env bash
# Processor benchmark: on one broker and one data set, measure a plain consume->produce passthrough
# (the practical limit of the machine), the cleaner and the enricher, each exactly-once and
# at-least-once, and print events/s, the ratio to the passthrough of the same mode, and p50/p99
# batch commit latency.
#
#   bash scripts/bench-processors.sh [EVENTS]      (default 300000; needs `make up`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-300000}
PREFIX=bench-$(date +%s).
bin=./target/release
export RUST_LOG=warn

cargo build --release --quiet --bins
bash scripts/stack.sh up >/dev/null

echo "data: $N simulated events in namespace $PREFIX"
$bin/cartstream-admin --topic-prefix "$PREFIX" bootstrap --partitions 6 >/dev/null
$bin/cartstream-producer --topic-prefix "$PREFIX" --count "$N" --rate 0 --metrics-addr off --progress off \
  --products 5000 --users 20000 --duplicate-ratio 0.01 >/dev/null

metric() { # port name -> value summed over label sets (0 while the service is not up yet)
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {print s + 0}'
}

quantile() { # port q -> upper bound of the bucket holding quantile q of cartstream_processor_batch_seconds
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v q="$2" '
    /^cartstream_processor_batch_seconds_bucket/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cnt[n] = $2 }
    END { total = cnt[n]; for (i = 1; i <= n; i++) if (cnt[i] >= q * total) { print les[i]; exit } }'
}

# run NAME MODE INPUT_COUNT -- CMD...: runs CMD until it consumed INPUT_COUNT records; prints a row.
declare -A RATE
PORT=9390
CHILD=
trap '[[ -n $CHILD ]] && kill -TERM $CHILD 2>/dev/null || true' EXIT
run() {
  local name=$1 mode=$2 want=$3; shift 4
  local port=$((PORT++)) group="bench-$name-$mode-$RANDOM"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is taken; stop what listens there" >&2; exit 1; fi
  "$@" --topic-prefix "$PREFIX" --group "$group" --mode "$mode" --metrics-addr "127.0.0.1:$port" \
    --instance-id "$group" >/tmp/bench-$name-$mode.log 2>&1 &
  local pid=$! start="" now consumed
  CHILD=$pid
  while :; do
    consumed=$(metric $port cartstream_processor_consumed_total)
    now=$(date +%s.%N)
    if [[ -z $start && $consumed != 0 ]]; then start=$now; first=$consumed; fi
    if ((consumed >= want)); then break; fi
    kill -0 $pid 2>/dev/null || { echo "$name exited; see /tmp/bench-$name-$mode.log"; tail -5 /tmp/bench-$name-$mode.log; exit 1; }
    sleep 0.2
  done
  local p50 p99
  p50=$(quantile $port 0.5); p99=$(quantile $port 0.99)
  kill -TERM $pid 2>/dev/null || true; wait $pid || true; CHILD=
  local rate
  rate=$(awk -v c="$consumed" -v f="$first" -v a="$start" -v b="$now" 'BEGIN { printf "%.0f", (c - f) / (b - a) }')
  RATE[$name-$mode]=$rate
  local base=${RATE[passthrough-$mode]:-$rate}
  printf '%-12s %-14s %10s ev/s  %5.2fx of passthrough  batch p50 <= %ss  p99 <= %ss\n' \
    "$name" "$mode" "$rate" "$(awk -v r="$rate" -v b="$base" 'BEGIN { print r / b }')" "$p50" "$p99"
}

raw=$($bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic purchases.raw | awk 'NR == 1 {print $2}')
for mode in exactly-once at-least-once; do
  # The passthrough copies raw to a scratch topic (kpi.windows, unused here) byte for byte.
  run passthrough $mode "$raw" -- $bin/cartstream-passthrough --from purchases.raw --to kpi.windows
  run cleaner $mode "$raw" -- $bin/cartstream-cleaner
done
clean=$($bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic purchases.clean | awk 'NR == 1 {print $2}')
# The cleaner ran twice (two groups), so the clean topic holds every event twice; the enricher
# reads it all.
for mode in exactly-once at-least-once; do
  run enricher $mode "$clean" -- $bin/cartstream-enricher
done
echo "exactly-once cost: cleaner $(awk -v e="${RATE[cleaner-exactly-once]}" -v a="${RATE[cleaner-at-least-once]}" 'BEGIN { printf "%.1f%%", (1 - e / a) * 100 }'), enricher $(awk -v e="${RATE[enricher-exactly-once]}" -v a="${RATE[enricher-at-least-once]}" 'BEGIN { printf "%.1f%%", (1 - e / a) * 100 }'), passthrough $(awk -v e="${RATE[passthrough-exactly-once]}" -v a="${RATE[passthrough-at-least-once]}" 'BEGIN { printf "%.1f%%", (1 - e / a) * 100 }') throughput"
