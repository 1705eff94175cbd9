#!/usr/bin/env python3
"""cartstream's Grafana dashboards, as code.

    python3 grafana/dashboards.py           # (re)write grafana/dashboards/*.json
    python3 grafana/dashboards.py --check   # exit 1 if a JSON file differs from what this script makes

Edit this file, not the JSON (Grafana provisions the JSON read-only). Every panel query must work on
the Prometheus of a running pipeline: e2e/tests/pipeline_it.rs evaluates each one through the
Prometheus HTTP API and fails on an invalid query or an empty result. Queries may use Grafana's
$__rate_interval, $__interval and $__range; that test substitutes them.

Labels: every cartstream target has `job="cartstream-<service>"` and `service="<service>"` (compose and
the native stack alike); the processors' loop metrics carry `stage`, the sinks' carry `sink`.
"""
import json
import sys
from pathlib import Path

DS = {"type": "prometheus", "uid": "prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards"


class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels = []
        self.x = self.y = 0
        self.row_h = 0

    def row(self, title):
        self._newline()
        self.panels.append({
            "id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.y += 1

    def _newline(self):
        if self.x:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0

    def panel(self, kind, title, description, targets, w=8, h=8, unit=None, **extra):
        if self.x + w > 24:
            self._newline()
        fc = {"defaults": {}, "overrides": []}
        if unit:
            fc["defaults"]["unit"] = unit
        fc["defaults"].update(extra.pop("defaults", {}))
        p = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DS, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": fc, "options": extra.pop("options", {}),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
                 **({"instant": True, "range": False} if kind in ("stat", "bargauge", "table") else {})}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        p.update(extra)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def ts(self, title, description, targets, **kw):
        self.panel("timeseries", title, description, targets, **kw)

    def stat(self, title, description, targets, **kw):
        kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                  "colorMode": "value", "graphMode": "area", "textMode": "value_and_name"})
        self.panel("stat", title, description, targets, **kw)

    def bars(self, title, description, targets, **kw):
        kw.setdefault("options", {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                  "orientation": "horizontal", "displayMode": "gradient"})
        self.panel("bargauge", title, description, targets, **kw)

    def json(self):
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["cartstream"], "timezone": "utc", "editable": False, "graphTooltip": 1,
            "refresh": "10s", "schemaVersion": 39, "version": 1,
            "time": {"from": "now-30m", "to": "now"}, "timepicker": {}, "templating": {"list": []},
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard"}]},
            "links": [], "panels": self.panels,
        }


RATE = "$__rate_interval"


def business():
    b = Board("cartstream-business-kpis", "cartstream / business KPIs",
              "What shoppers do, from the windower's final 1-minute windows (event time): events, revenue, "
              "funnel, best categories and products, trend alerts.")
    b.row("Now")
    b.stat("Revenue per minute", "Revenue of purchases closed in the last minute of windows.",
           [(f"sum(rate(cartstream_kpi_revenue_total[{RATE}])) * 60", "revenue / min")], w=6, h=5)
    b.stat("Purchases per minute", "Purchases per minute over the last windows.",
           [(f"sum(rate(cartstream_kpi_events_total{{event_type=\"purchase\"}}[{RATE}])) * 60", "purchases / min")],
           w=6, h=5)
    b.stat("Conversion rate", "Purchases / views of the latest final window.",
           [("cartstream_kpi_conversion_rate", "conversion")], w=6, h=5, unit="percentunit")
    b.stat("Distinct users (latest window)", "Distinct users of the latest final window.",
           [("cartstream_kpi_distinct_users", "users")], w=6, h=5)
    b.row("Flow")
    b.ts("Events per second by type", "Events counted in final windows, per second.",
         [(f"sum by (event_type) (rate(cartstream_kpi_events_total[{RATE}]))", "{{event_type}}")], w=12)
    b.ts("Revenue per minute by currency", "Revenue of purchases, per minute.",
         [(f"sum by (currency) (rate(cartstream_kpi_revenue_total[{RATE}])) * 60", "{{currency}}")], w=12)
    b.bars("Conversion funnel", "Views, carts, removals and purchases over the dashboard's time range.",
           [(f"sum by (event_type) (increase(cartstream_kpi_events_total[$__range]))", "{{event_type}}")], w=8)
    b.bars("Top categories by purchases", "The ten categories with the most purchases over the time range.",
           [(f"topk(10, sum by (category) (increase(cartstream_kpi_category_purchases_total[$__range])))",
             "{{category}}")], w=8)
    b.bars("Top products (latest window)", "Best sellers of the latest closed window.",
           [("max by (product) (cartstream_kpi_top_product_purchases)", "product {{product}}")], w=8)
    b.row("Alerts")
    b.ts("Alerts raised by type", "Trend, suspicious-user and price-anomaly alerts of the detector, per minute.",
         [(f"sum by (alert_type) (rate(cartstream_detector_alerts_total[{RATE}])) * 60", "{{alert_type}}")],
         w=12)
    b.ts("Event-time freshness", "Wall clock minus the end of the latest final window: how far behind the "
         "KPIs are.", [("time() - max(cartstream_kpi_window_end_seconds)", "behind")], w=12, unit="s")
    return b


def pipeline():
    b = Board("cartstream-pipeline-health", "cartstream / pipeline health",
              "Is every service up, what flows through each stage, lag, dead letters, late events, latency, "
              "transactions, data-quality gates, sinks and resources.")
    b.row("Services")
    b.stat("Scrape targets up", "1 = Prometheus reached the service's /metrics endpoint on the last scrape.",
           [('up{job=~"cartstream-.+"}', "{{service}}")], w=24, h=5,
           defaults={"mappings": [{"type": "value", "options": {
               "0": {"text": "DOWN", "color": "red", "index": 0},
               "1": {"text": "UP", "color": "green", "index": 1}}}],
               "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                            {"color": "green", "value": 1}]},
               "color": {"mode": "thresholds"}},
           options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"})
    b.row("Throughput")
    b.ts("Producer: events sent / s by type", "Events the simulator or replay handed to Kafka.",
         [(f"sum by (event_type) (rate(cartstream_producer_events_sent_total[{RATE}]))", "{{event_type}}")])
    b.ts("Processors: records consumed / s", "Per stage.",
         [(f"sum by (stage) (rate(cartstream_processor_consumed_total[{RATE}]))", "{{stage}}")])
    b.ts("Sinks: rows written / s", "Rows (ScyllaDB) and records (lake) written per second.",
         [(f"sum by (sink) (rate(cartstream_sink_rows_written_total[{RATE}]))", "{{sink}}")])
    b.row("Backlog and errors")
    b.ts("Consumer lag (records)", "Records behind the end of the input, per stage.",
         [("sum by (stage) (cartstream_processor_consumer_lag_records)", "{{stage}}"),
          ("sum by (sink) (cartstream_sink_commit_lag_records)", "sink {{sink}}")])
    b.ts("Dead letters / s by stage and reason", "Records rejected to the dead-letter topic.",
         [(f"sum by (stage, code) (rate(cartstream_processor_dead_lettered_total[{RATE}]))", "{{stage}} {{code}}")])
    b.ts("Late events / s", "Events later than the grace period, sent to the late topic.",
         [(f"sum by (stage) (rate(cartstream_processor_late_events_total[{RATE}]))", "{{stage}}")])
    b.row("Latency and transactions")
    b.ts("End-to-end latency p99 (s)", "Record timestamp to commit of the batch that processed it, per stage.",
         [(f"histogram_quantile(0.99, sum by (stage, le) (rate(cartstream_processor_latency_seconds_bucket[{RATE}])))",
           "{{stage}}")], unit="s")
    b.ts("Batch processing time p99 (s)", "Process + commit of one batch, per stage.",
         [(f"histogram_quantile(0.99, sum by (stage, le) (rate(cartstream_processor_batch_seconds_bucket[{RATE}])))",
           "{{stage}}")], unit="s")
    b.ts("Transactions / s", "Committed and aborted Kafka transactions per stage.",
         [(f"sum by (stage, result) (rate(cartstream_processor_transactions_total[{RATE}]))", "{{stage}} {{result}}")])
    b.row("Windows")
    b.ts("Watermark lag (s)", "Wall clock minus the event-time watermark, per stage.",
         [("max by (stage) (cartstream_processor_watermark_lag_seconds)", "{{stage}}")], unit="s")
    b.ts("Open windows and sessions", "State held in memory, waiting for the watermark.",
         [("sum by (stage) (cartstream_processor_open_windows)", "{{stage}} windows"),
          ("sum by (stage) (cartstream_processor_open_sessions)", "{{stage}} sessions")])
    b.row("Data quality")
    b.ts("Quality gates: rates of the latest judged window",
         "The detector's gates, per event-time window (--gate-window): the share of events with each enriched "
         "field unknown (field) and the share of records the cleaner rejected, per reason (reject). A rate above "
         "its --gate-* threshold raises a data_quality alert.",
         [("max by (gate, subject) (cartstream_quality_rate)", "{{gate}} {{subject}}")], unit="percentunit")
    b.ts("Quality gates: window volume against its recent level",
         "Events and rejects of the latest judged window, and the mean of the windows before it (the volume gate's "
         "baseline).",
         [("max by (kind) (cartstream_quality_window_records)", "{{kind}}"),
          ("max(cartstream_quality_volume_baseline)", "baseline (mean records)")])
    b.ts("Quality breaches / s and lake paused",
         "Breaches by gate and subject (each one a data_quality alert on alerts.raised), and 1 while a breach pauses "
         "the lake sink (--quality-pause).",
         [(f"sum by (gate, subject) (rate(cartstream_quality_breaches_total[{RATE}]))", "{{gate}} {{subject}}"),
          ("max(cartstream_lake_paused)", "lake paused")])
    b.row("Sinks")
    b.ts("Sink in-flight writes", "Writes sent and not yet acknowledged (bounded).",
         [("sum by (sink) (cartstream_sink_in_flight_writes)", "{{sink}}")])
    b.ts("Sink write latency p99 (s)", "Per sink.",
         [(f"histogram_quantile(0.99, sum by (sink, le) (rate(cartstream_sink_write_seconds_bucket[{RATE}])))",
           "{{sink}}")], unit="s")
    b.ts("Sink retries / s and lake bytes / s", "Retried writes (database or object store away) and Parquet "
         "bytes uploaded.",
         [(f"sum by (sink) (rate(cartstream_sink_retries_total[{RATE}]))", "retries {{sink}}"),
          (f"sum by (sink) (rate(cartstream_sink_bytes_written_total[{RATE}]))", "bytes {{sink}}")])
    b.row("Resources")
    b.ts("Resident memory", "Per service.", [('process_resident_memory_bytes{job=~"cartstream-.+"}', "{{service}}")],
         w=12, unit="bytes")
    b.ts("CPU", "Cores used per service.",
         [(f'rate(process_cpu_seconds_total{{job=~"cartstream-.+"}}[{RATE}])', "{{service}}")], w=12)
    return b


def model():
    b = Board("cartstream-model-quality", "cartstream / model quality",
              "The demand forecast: which model serves, how accurate it is live, input drift, retrains and "
              "promotions.")
    b.row("Model")
    b.stat("Champion version", "Version of the model serving forecasts.",
           [("max(cartstream_model_champion_version)", "version")], w=8, h=5)
    b.stat("Live error (sMAPE)", "Forecasts compared with the actuals of the KPI windows as they arrive.",
           [("max by (target) (cartstream_model_live_smape)", "{{target}}")], w=8, h=5)
    b.stat("Forecast requests / s", "HTTP forecast requests served.",
           [(f"sum(rate(cartstream_model_http_requests_total[{RATE}]))", "requests / s")], w=8, h=5)
    b.row("Quality over time")
    b.ts("Live error", "sMAPE of recent forecasts against the actuals; a retrain starts above the "
         "service's --error-threshold.",
         [("max by (target) (cartstream_model_live_smape)", "{{target}}"),
          ("max by (target) (cartstream_model_live_relative_error)", "{{target}} vs seasonal-naive")], w=12)
    b.ts("Input drift (PSI) per feature", "Population stability index of live features against training.",
         [("max by (feature) (cartstream_model_drift_psi)", "{{feature}}")], w=12)
    b.ts("Retrains and decisions", "Retrains by trigger, and what was decided about each challenger.",
         [("sum by (trigger) (cartstream_model_retrains_total)", "retrain: {{trigger}}"),
          ("sum by (decision) (cartstream_model_decisions_total)", "{{decision}}")], w=12)
    b.ts("Forecast latency p99 (s)", "Per API route.",
         [(f"histogram_quantile(0.99, sum by (route, le) "
           f"(rate(cartstream_model_http_request_duration_seconds_bucket[{RATE}])))", "{{route}}")],
         w=12, unit="s")
    b.bars("Forecast for the next period", "Purchases forecast per category for the next period.",
           [('topk(10, max by (category) (cartstream_model_forecast_next_period{target="purchases"}))',
             "{{category}}")], w=12)
    b.ts("Hold-out error: champion vs baselines", "MAE on the held-out range when the champion was "
         "trained, next to seasonal-naive and moving-average on the same range.",
         [("max by (target, model) (cartstream_model_holdout_mae)", "{{target}} {{model}}")], w=12)
    return b


BOARDS = {"business-kpis.json": business, "pipeline-health.json": pipeline, "model-quality.json": model}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in BOARDS.items():
        text = json.dumps(make().json(), indent=2) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(OUT.parent.parent)}")
    if stale:
        print(f"out of date (run python3 grafana/dashboards.py): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
