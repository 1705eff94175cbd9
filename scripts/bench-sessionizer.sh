#!/usr/bin/env bash
# Sessionizer benchmark: on one broker and one data set of enriched events with 100 000
# concurrent shopper sessions (about EVENTS/9 distinct sessions in all), measure the plain
# consume->produce passthrough of the enriched topic (the practical limit of the machine) and the
# sessionizer, both exactly-once, and print events/s, the ratio to the passthrough, batch commit
# latency, peak RSS, sessions emitted and open at the end. The machine's load (other builds, other
# benchmarks) is printed next to each figure: on a shared 2-core box, compare within one run only.
#
#   bash scripts/bench-sessionizer.sh [EVENTS] [SESSIONS]   (defaults 1000000 and 100000; needs `make up`)
#   BENCH_PREFIX=bench-sess-123. bash scripts/bench-sessionizer.sh   (again on the data of an earlier run)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-1000000}
SESSIONS=${2:-100000}
PREFIX=${BENCH_PREFIX:-bench-sess-$(date +%s).}
bin=./target/release
export RUST_LOG=warn

cargo build --release --quiet -p cartstream-processors -p cartstream-producer -p cartstream-admin \
  --bin cartstream-cleaner --bin cartstream-enricher --bin cartstream-passthrough --bin cartstream-sessionizer \
  --bin cartstream-producer --bin cartstream-admin
bash scripts/stack.sh up >/dev/null

if [[ -z ${BENCH_PREFIX:-} ]]; then
echo "data: $N simulated events, $SESSIONS concurrent sessions, namespace $PREFIX"
$bin/cartstream-admin --topic-prefix "$PREFIX" bootstrap --partitions 6 >/dev/null
# Simulated clock: 1000 events per simulated second, pauses inside a session well below the
# 5-minute gap (100 000 sessions / 1000 ev/s = 100 s mean think time).
$bin/cartstream-producer --topic-prefix "$PREFIX" --count "$N" --rate 0 --metrics-addr off --progress off \
  --start-time 2026-11-01T00:00:00Z --speed 1 --sessions "$SESSIONS" --session-gap-secs 300 \
  --products 5000 --users 200000 >/dev/null
fi

metric() { # port name -> value summed over label sets (0 while the service is not up yet)
  { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {print s + 0}'
}

quantile() { # port q -> upper bound of the bucket holding quantile q of cartstream_processor_batch_seconds
  curl -fsS "http://127.0.0.1:$1/metrics" | awk -v q="$2" '
    /^cartstream_processor_batch_seconds_bucket/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cnt[n] = $2 }
    END { total = cnt[n]; for (i = 1; i <= n; i++) if (cnt[i] >= q * total) { print les[i]; exit } }'
}

load() { awk '{print $1}' /proc/loadavg; }

declare -A RATE
PORT=${BENCH_PORT:-9590}
CHILD=
trap '[[ -n $CHILD ]] && kill -TERM $CHILD 2>/dev/null || true' EXIT
# run NAME WANT -- CMD...: runs CMD (exactly-once) until it consumed WANT records; prints a row.
run() {
  local name=$1 want=$2; shift 3
  local port=$((PORT++)) group="${PREFIX}bench-$name-$RANDOM"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is taken; stop what listens there" >&2; exit 1; fi
  "$@" --topic-prefix "$PREFIX" --group "$group" --metrics-addr "127.0.0.1:$port" \
    --instance-id "$name" >/tmp/bench-$name.log 2>&1 &
  local pid=$! start="" now consumed rss peak=0 load_start
  CHILD=$pid
  load_start=$(load)
  while :; do
    consumed=$(metric $port cartstream_processor_consumed_total)
    now=$(date +%s.%N)
    if [[ -z $start && $consumed != 0 ]]; then start=$now; first=$consumed; fi
    rss=$(ps -o rss= -p $pid 2>/dev/null || echo 0); ((rss > peak)) && peak=$rss
    if ((consumed >= want)); then break; fi
    kill -0 $pid 2>/dev/null || { echo "$name exited; see /tmp/bench-$name.log"; tail -5 /tmp/bench-$name.log; exit 1; }
    sleep 0.2
  done
  local p50 p99 extra=""
  p50=$(quantile $port 0.5); p99=$(quantile $port 0.99)
  if [[ $name == sessionizer ]]; then
    extra="  sessions emitted $(metric $port cartstream_sessionizer_sessions_closed_total), open $(metric $port cartstream_processor_open_sessions)"
  fi
  kill -TERM $pid 2>/dev/null || true; wait $pid || true; CHILD=
  local rate
  rate=$(awk -v c="$consumed" -v f="$first" -v a="$start" -v b="$now" 'BEGIN { printf "%.0f", (c - f) / (b - a) }')
  RATE[$name]=$rate
  local base=${RATE[passthrough]:-$rate}
  printf '%-12s %10s ev/s  %5.2fx of passthrough  batch p50 <= %ss p99 <= %ss  peak RSS %d MiB  load %s->%s%s\n' \
    "$name" "$rate" "$(awk -v r="$rate" -v b="$base" 'BEGIN { print r / b }')" "$p50" "$p99" \
    $((peak / 1024)) "$load_start" "$(load)" "$extra"
}

# The enriched topic first (cleaner and enricher, not measured here).
if [[ -z ${BENCH_PREFIX:-} ]]; then
raw=$($bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic purchases.raw | awk 'NR == 1 {print $2}')
run cleaner "$raw" -- $bin/cartstream-cleaner >/dev/null
clean=$($bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic purchases.clean | awk 'NR == 1 {print $2}')
run enricher "$clean" -- $bin/cartstream-enricher >/dev/null
fi
enriched=$($bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic purchases.enriched | awk 'NR == 1 {print $2}')
unset 'RATE[cleaner]' 'RATE[enricher]'
echo "input: $enriched enriched events; 2 cores shared with whatever else runs (load = 1-min load average before->after)"
# The passthrough copies the enriched events to a scratch topic (kpi.windows, unused here).
run passthrough "$enriched" -- $bin/cartstream-passthrough --from purchases.enriched --to kpi.windows
run sessionizer "$enriched" -- $bin/cartstream-sessionizer --gap 5m --grace 1m
echo "sessionizer / passthrough: $(awk -v s="${RATE[sessionizer]}" -v p="${RATE[passthrough]}" 'BEGIN { printf "%.0f%%", s / p * 100 }') (aim: 50% or more)"
$bin/cartstream-admin --topic-prefix "$PREFIX" inspect --topic sessions.closed | head -1
