#!/usr/bin/env bash
# `make demo`: the whole pipeline end to end on the local stack. Starts the stack if it is not
# running (installing it on first use), builds the binaries, creates topics, schemas and tables,
# starts every service (scripts/pipeline.sh), simulates shoppers for a few minutes with a trend burst,
# duplicates, late and malformed records, then prints what came out and where to look. The stack and
# the services keep running until `make down`. Each run starts over (the previous demo's topics, lake
# and models are deleted first; the CQL tables keep their rows: upserts by natural key).
#
# Settings: DEMO_SECS (wall seconds of live simulation, default 120), DEMO_RATE (events/s, default
# 400), DEMO_SPEED (simulated seconds per wall second, default 60: 120 s = 2 simulated hours). Before
# it, 8 simulated hours of history in 30 s, so windows have baselines and the model has data.
#
# `bash scripts/demo.sh top-products [EXPR] [N]` prints only the summary's "top products of the
# latest window" (the N best sellers of EXPR, default the windower's
# cartstream_kpi_top_product_purchases, by purchases, most first) from PROMETHEUS_URL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${DEMO_SECS:-120}
RATE=${DEMO_RATE:-400}
SPEED=${DEMO_SPEED:-60}
BIN=./target/debug
PROM=${PROMETHEUS_URL:-http://127.0.0.1:9090}
started=$SECONDS

step() { printf '\n==> [%3d s] %s\n' $((SECONDS - started)) "$*"; }
prom() { # instant query, printed as "label value" lines; a third argument "desc" sorts by value, most first
  curl -fsS --max-time 5 "$PROM/api/v1/query" --data-urlencode "query=$1" 2>/dev/null \
    | python3 -c 'import json, sys
label, order = sys.argv[1], sys.argv[2]
rows = [(r["metric"].get(label, "total"), float(r["value"][1])) for r in json.load(sys.stdin)["data"]["result"]]
if order == "desc":
    rows.sort(key=lambda r: (-r[1], r[0]))
for name, value in rows:
    print("    %-34s %14s" % (name, format(value, ",.2f")))' "${2:-}" "${3:-}" || true
}
top_products() { # the N best sellers of the latest closed window, by purchases, most first
  local expr=${1:-cartstream_kpi_top_product_purchases} n=${2:-10}
  # The gauge has one series per (rank, product); Prometheus returns series in no useful order
  # (by labels), so rank by value here and in the query.
  prom "sort_desc(topk($n, max by (product) ($expr)))" product desc
}
if [[ ${1:-} == top-products ]]; then
  top_products "${2:-}" "${3:-10}"
  exit 0
fi
metric() { # port regex -> sum of the matching samples
  curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v re="$2" '$0 ~ re {s += $NF} END {printf "%d", s}'
}
port() { bash scripts/pipeline.sh port "$1"; }
now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }

step "local stack (installs what is missing on first run)"
bash scripts/stack.sh up

step "building cartstream (first build takes a few minutes)"
cargo build --workspace --bins --quiet

step "starting over: the previous demo's services, topics, lake and models (other data of the stack stays)"
# Event times are simulated in the recent past: a second run on top of the first would be one big
# late arrival. Only the main namespace's topics go (catalog topics and the services' internal ones).
bash scripts/pipeline.sh stop >/dev/null
bash scripts/services.sh stop producer >/dev/null
kt() { bash scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 "$@"; }
ours='^(purchases\.[a-z]+|catalog\.(products|users)|kpi\.windows|sessions\.closed|alerts\.raised|cartstream-.*)$'
if kt --list | grep -qE "$ours"; then
  kt --delete --topic "$(kt --list | grep -E "$ours" | paste -sd'|')" >/dev/null 2>&1 || true
  for _ in $(seq 60); do kt --list | grep -qE "$ours" || break; sleep 1; done
fi
rm -rf .stack/lake .stack/models

step "topics, schemas, CQL tables and every service"
MODEL_PERIOD_MS=60000 bash scripts/pipeline.sh start

HISTORY_SECS=30 HISTORY_HOURS=8
step "history: $HISTORY_HOURS hours of shop time in $HISTORY_SECS s (what the windows, baselines and the model start from)"
"$BIN/cartstream-producer" simulate --start-time $(($(now_ms) - (HISTORY_HOURS * 3600 + SECS * SPEED) * 1000)) \
  --speed $((HISTORY_HOURS * 3600 / HISTORY_SECS)) --duration-secs "$HISTORY_SECS" --rate 1500 \
  --products 2000 --users 5000 --duplicate-ratio 0.02 --malformed-ratio 0.01 --metrics-addr off --progress off | tail -1

# The live run prices from catalog.products as the history left it (its price changes included),
# as the enricher and the detector see it: the seed's prices would be false price anomalies.
step "live: $((SECS * SPEED / 60)) minutes of shop time in $SECS s at $RATE events/s: a trend on kids.toys, 2% duplicates, 1% late, 1% malformed"
bash scripts/services.sh start producer 9209 -- "$BIN/cartstream-producer" simulate \
  --start-time $(($(now_ms) - SECS * SPEED * 1000)) --speed "$SPEED" \
  --duration-secs "$SECS" --rate "$RATE" --products 2000 --users 5000 --skip-dimensions --prices-from-topic \
  --trend-at +40m --trend-category kids.toys --trend-for 20m \
  --duplicate-ratio 0.02 --late-ratio 0.01 --malformed-ratio 0.01 --progress off >/dev/null
pid=$(<.stack/services/producer.pid)
while kill -0 "$pid" 2>/dev/null; do
  sleep 15
  kill -0 "$pid" 2>/dev/null || break
  printf '    %3d s: sent %s events, enriched %s, final windows %s, sessions %s, alerts %s\n' $((SECONDS - started)) \
    "$(metric 9209 '^cartstream_producer_events_sent_total')" \
    "$(metric "$(port enricher)" '^cartstream_processor_produced_total.*output="data"')" \
    "$(metric "$(port windower)" '^cartstream_windower_windows_emitted_total.*final')" \
    "$(metric "$(port sessionizer)" '^cartstream_sessionizer_sessions_closed_total')" \
    "$(metric "$(port detector)" '^cartstream_detector_alerts_total')"
done

step "waiting for every consumer to catch up"
bash scripts/pipeline.sh wait || true
sleep 6 # one more Prometheus scrape

step "what went through"
"$BIN/cartstream-admin" inspect --topic purchases.raw | sed -n '1p;/per event type/,$p'
"$BIN/cartstream-admin" inspect --topic purchases.dlq | sed -n '1p;/dead letters by reason/p'
"$BIN/cartstream-admin" inspect --topic purchases.late | sed -n '1p'
echo "  KPIs of final 1-minute windows (event time), all windows so far:"
prom 'sum by (event_type) (cartstream_kpi_events_total)' event_type
prom 'sum by (currency) (cartstream_kpi_revenue_total)' currency
echo "  top categories by purchases:"
prom 'topk(5, sum by (category) (cartstream_kpi_category_purchases_total))' category
echo "  top products of the latest window:"
top_products
echo "  alerts by type:"
prom 'sum by (alert_type) (cartstream_detector_alerts_total)' alert_type
echo "  trend alerts:"
"$BIN/cartstream-admin" inspect --topic alerts.raised --samples 1000 | grep '"alert_type":"trend"' \
  | python3 -c 'import json, sys
for line in sys.stdin:
    a = json.loads(line)
    print("    %-8s %-40s observed %5.0f  baseline %6.1f  threshold %6.1f" % (a["severity"], a["subject_kind"] + " " + a["subject_id"], a["observed"], a["baseline"], a["threshold"]))' | head -10
echo "  data quality, % of the latest judged window (the detector's gates: unknown fields, rejects by reason):"
prom '100 * max by (subject) (cartstream_quality_rate{gate="field"})' subject
prom '100 * max by (subject) (cartstream_quality_rate{gate="reject"} > 0)' subject
echo "  data-quality breaches (each one a data_quality alert):"
prom 'sum by (gate) (cartstream_quality_breaches_total)' gate
echo "  price anomalies (the live run prices from catalog.products as the history left it):"
prom 'sum(cartstream_detector_alerts_total{alert_type="price_anomaly"})'
echo "  forecast (model service):"
model_port=$(port model-api)
curl -fsS --max-time 5 "http://127.0.0.1:$model_port/v1/model" 2>/dev/null | cut -c1-300 || echo "    (no model yet)"
echo
curl -fsS --max-time 5 "http://127.0.0.1:$model_port/v1/forecast?category=kids.toys&horizon=3" 2>/dev/null | cut -c1-300 || true
echo
lake=.stack/lake
echo "  Parquet lake: $(find "$lake" -name '*.parquet' 2>/dev/null | wc -l) files, $(du -sh "$lake" 2>/dev/null | cut -f1) in $lake"
echo "  SQL over the lake (cartstream-admin lake-query funnel_by_day_category; DuckDB from PyPI on first use):"
"$BIN/cartstream-admin" lake-query funnel_by_day_category --lake "$lake" 2>&1 | head -12 | sed 's/^/    /' || true

cat <<MSG

==> done in $((SECONDS - started)) s. Everything keeps running; where to look:
  Prometheus           $PROM  (alerts: $PROM/alerts; try cartstream_kpi_events_total)
  dashboards           grafana/dashboards/*.json (Grafana runs with docker compose: http://127.0.0.1:3000)
  services             bash scripts/services.sh status   (logs in .stack/services/, metrics on ports 9201-9208)
  forecasts            http://127.0.0.1:$model_port/v1/forecast?category=kids.toys&horizon=6
  CQL tables           keyspace cartstream on 127.0.0.1:9042 (kpi_by_dimension, events_by_user, sessions_by_user, alerts_by_day)
  Parquet lake         $lake   (closed hours compacted by the lake sink; SQL: $BIN/cartstream-admin lake-query --list)
  any topic            $BIN/cartstream-admin inspect --topic kpi.windows --samples 3
  rebuild everything   make replay GEN=g2
  stop everything      make down
MSG
