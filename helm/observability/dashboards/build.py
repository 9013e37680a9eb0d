#!/usr/bin/env python3
"""Fleetgate's Grafana dashboards, built from code so each query is reviewed once and drift-tested.

`python helm/observability/dashboards/build.py` writes the JSON dashboards next to this file; `--check`
exits 1 when the committed JSON differs from what this code builds (CI). Stdlib only, so it runs anywhere.
Every metric name used here must be exported by the gateway or the simulator, be a recording rule of
../rules/*.yaml, or be on the external allow-list of tests/helm/test_metric_names.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "[$__rate_interval]"  # Grafana's scrape-aware window: never shorter than four scrapes

Panel = dict[str, Any]


# --- queries -------------------------------------------------------------------------------------------

def rate(metric: str, matchers: str, *, by: str = "") -> str:
    """Per-second rate of a counter, summed (by `by`)."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{matchers}}}{RATE}))"


def ratio(numerator: str, denominator: str) -> str:
    """A ratio of two summed rates; `clamp_min` keeps an idle period at 0 instead of NaN."""
    return f"{numerator} / clamp_min({denominator}, 1e-9)"


def quantile(q: float, histogram: str, matchers: str, *, by: str = "") -> str:
    """The q-quantile of a histogram over the rate window (`by` labels kept, `le` always)."""
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({histogram}_bucket{{{matchers}}}{RATE})))"


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    """One Prometheus query of a panel (refId is assigned by `panel`).

    `instant` evaluates once, at the end of the range: for stats over a long fixed window (24h, 30d),
    which a range query would recompute at every step.
    """
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
            "range": not instant, "instant": instant}


# --- panels --------------------------------------------------------------------------------------------

def thresholds(*steps: tuple[str, float], base: str = "green") -> dict[str, Any]:
    """Absolute thresholds: `base` below the first step, then each (colour, from value)."""
    return {"mode": "absolute",
            "steps": [{"color": base, "value": None}, *({"color": c, "value": v} for c, v in steps)]}


def panel(kind: str, title: str, description: str, targets: Iterable[dict[str, Any]], *, unit: str,
          w: int, h: int, minimum: float | None = 0, maximum: float | None = None,
          steps: Iterable[tuple[str, float]] = (), base: str = "green", decimals: int | None = None,
          mappings: list[dict[str, Any]] | None = None) -> Panel:
    """A panel of `kind` (timeseries / stat) sized w × h grid cells; `layout` places it."""
    targets = [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]
    steps = tuple(steps)
    defaults: dict[str, Any] = {"unit": unit, "thresholds": thresholds(*steps, base=base), "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False,
                              "thresholdsStyle": {"mode": "line" if steps else "off"}}
        options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                   "tooltip": {"mode": "multi", "sort": "desc"}}
    else:
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                   "orientation": "auto", "textMode": "auto"}
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
            "gridPos": {"h": h, "w": w, "x": 0, "y": 0}}


def timeseries(title: str, description: str, *targets: dict[str, Any], unit: str, w: int = 12, h: int = 8,
               **kwargs: Any) -> Panel:
    return panel("timeseries", title, description, targets, unit=unit, w=w, h=h, **kwargs)


def stat(title: str, description: str, *targets: dict[str, Any], unit: str, w: int = 4, h: int = 4,
         **kwargs: Any) -> Panel:
    return panel("stat", title, description, targets, unit=unit, w=w, h=h, **kwargs)


def layout(rows: Iterable[tuple[str, Iterable[Panel]]]) -> list[Panel]:
    """Place panels row by row, left to right, wrapping at the grid width; number every panel.

    Stable ids and positions follow from the order in the code, so a rebuild changes nothing.
    """
    placed: list[Panel] = []
    y = 0
    for title, panels in rows:
        placed.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}})
        y += 1
        x, line_height = 0, 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            placed.append({**p, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            x, line_height = x + w, max(line_height, h)
        y += line_height
    return [{"id": i, **p} for i, p in enumerate(placed, start=1)]


# --- templating ----------------------------------------------------------------------------------------

def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": ""}


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-select variable from `label_values(...)`; "All" is `.*`, so it also matches an absent label."""
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": query, "definition": query, "current": {}, "hide": 0, "includeAll": True,
            "allValue": ".*", "multi": True, "options": [], "refresh": 2, "regex": "", "sort": 1}


def constant_variable(name: str, label: str, value: float) -> dict[str, Any]:
    """A hidden constant, so a number every query shares (an SLO target) is written once."""
    return {"name": name, "label": label, "type": "constant", "query": str(value), "hide": 2,
            "current": {"text": str(value), "value": str(value)},
            "options": [{"selected": True, "text": str(value), "value": str(value)}], "skipUrlSync": False}


def dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
              rows: Iterable[tuple[str, Iterable[Panel]]]) -> dict[str, Any]:
    """A complete dashboard; `uid` is stable so links and provisioning survive rebuilds."""
    return {
        "uid": uid, "title": title, "description": description, "tags": ["fleetgate"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "timezone": "", "refresh": "30s", "timepicker": {},
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "Fleetgate", "type": "dashboards", "tags": ["fleetgate"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(rows),
    }


# --- the vLLM deployment -------------------------------------------------------------------------------

def vllm_dashboard() -> dict[str, Any]:
    """Pods, latency, queue and KV cache of the vLLM engines (vLLM's own metric names, `model_name` label)."""
    v = 'namespace=~"$namespace", model_name=~"$model"'
    # The scrape job is the Service `{model}-{env}`; its Deployment has the same name, so its pods are
    # `{model}-{env}-<replicaset hash>-<suffix>` (not those of a `{model}-{env}-canary` release).
    job = 'namespace=~"$namespace", job=~"$job"'
    pods = 'namespace=~"$namespace", pod=~"($job)-[a-z0-9]+-[a-z0-9]+"'
    quantiles = (0.5, 0.95, 0.99)
    running = "vllm:num_requests_running"
    variables = [
        query_variable("namespace", "Namespace (environment)", f"label_values({running}, namespace)"),
        query_variable("model", "Model", f'label_values({running}{{namespace=~"$namespace"}}, model_name)'),
        query_variable("job", "Service", f"label_values({running}{{{v}}}, job)"),
    ]
    rows = [
        ("Pods", [
            stat("Targets up", "vLLM pods Prometheus scrapes successfully (`up`).",
                 target(f"sum(up{{{job}}})", "up"), unit="short", w=6),
            stat("Pods ready", "Pods of the deployment with the Ready condition (kube-state-metrics).",
                 target(f'sum(kube_pod_status_ready{{{pods}, condition="true"}})', "ready"), unit="short", w=6),
            stat("Restarts (1h)", "Container restarts in the last hour: crash loops, OOM kills, failed probes.",
                 target(f"sum(increase(kube_pod_container_status_restarts_total{{{pods}}}[1h]))", "restarts"),
                 unit="short", w=6, steps=(("orange", 1), ("red", 3))),
            stat("KV cache (max)", "Fullest KV cache of any pod; near 100 % requests queue and get preempted.",
                 target(f"max(vllm:kv_cache_usage_perc{{{v}}})", "kv cache"), unit="percentunit", w=6,
                 maximum=1, steps=(("orange", 0.8), ("red", 0.95))),
            timeseries("Scrape target up by pod", "0 = the pod's /metrics is not reachable (down or not ready).",
                       target(f"min by (pod) (up{{{job}}})", "{{pod}}"), unit="short", maximum=1),
            timeseries("Container restarts by pod", "Restarts per rate window: a rising line is a crash loop.",
                       target(f"sum by (pod) (increase(kube_pod_container_status_restarts_total{{{pods}}}{RATE}))",
                              "{{pod}}"), unit="short"),
        ]),
        ("Latency", [
            timeseries("Time to first token", "What a streaming user waits before the first token (engine side).",
                       *(target(quantile(q, "vllm:time_to_first_token_seconds", v, by="model_name"),
                                f"p{round(q * 100)} {{{{model_name}}}}") for q in quantiles), unit="s"),
            timeseries("End-to-end request latency", "From arrival in the engine to the last token.",
                       *(target(quantile(q, "vllm:e2e_request_latency_seconds", v, by="model_name"),
                                f"p{round(q * 100)} {{{{model_name}}}}") for q in quantiles), unit="s"),
        ]),
        ("Queue and throughput", [
            timeseries("Requests running and waiting", "Waiting > 0 for long means the pods are saturated: "
                       "the autoscaler's signal (vllm:num_requests_waiting).",
                       target(f"sum by (pod) (vllm:num_requests_running{{{v}}})", "running {{pod}}"),
                       target(f"sum by (pod) (vllm:num_requests_waiting{{{v}}})", "waiting {{pod}}"),
                       unit="short"),
            timeseries("Finished requests by reason", "stop = natural end, length = hit max_tokens, "
                       "abort = cancelled (often a client disconnect).",
                       target(rate("vllm:request_success_total", v, by="model_name, finished_reason"),
                              "{{model_name}} {{finished_reason}}"), unit="reqps"),
            timeseries("Tokens per second", "Prefill (prompt) and decode (generation) throughput.",
                       target(rate("vllm:prompt_tokens_total", v, by="model_name"), "prompt {{model_name}}"),
                       target(rate("vllm:generation_tokens_total", v, by="model_name"), "generation {{model_name}}"),
                       unit="short", w=24),
        ]),
        ("KV cache", [
            timeseries("KV-cache usage by pod", "Fraction of the KV cache in use (vllm:kv_cache_usage_perc).",
                       target(f"max by (model_name, pod) (vllm:kv_cache_usage_perc{{{v}}})",
                              "{{model_name}} {{pod}}"),
                       unit="percentunit", w=24, maximum=1, steps=(("orange", 0.8), ("red", 0.95))),
        ]),
    ]
    return dashboard("fleetgate-vllm", "Fleetgate / vLLM deployment",
                     "vLLM pods behind the gateway: pod status, latency, queue and KV cache.", variables, rows)


# --- the gateway ---------------------------------------------------------------------------------------

DEGRADED = [{"type": "value", "options": {"0": {"text": "OK", "color": "green", "index": 0},
                                           "1": {"text": "DEGRADED", "color": "red", "index": 1}}}]


def gateway_dashboard() -> dict[str, Any]:
    """Traffic, latency, errors, spend and limit rejections of the gateway (fleetgate_* metrics)."""
    g = 'namespace=~"$namespace", model=~"$model"'  # metrics labelled by registry model
    n = 'namespace=~"$namespace"'  # gateway-wide metrics
    requests = "fleetgate_requests_total"
    variables = [
        query_variable("namespace", "Namespace (environment)", f"label_values({requests}, namespace)"),
        query_variable("model", "Model", f'label_values({requests}{{namespace=~"$namespace"}}, model)'),
    ]
    errors_5xx = rate(requests, f'{g}, status=~"5.."')
    rows = [
        ("Overview", [
            stat("Requests/s", "All inference requests, any outcome.", target(rate(requests, g)), unit="reqps"),
            stat("Error ratio (5xx)", "Share of requests the gateway or a pod failed (429s are not errors).",
                 target(ratio(errors_5xx, rate(requests, g))), unit="percentunit",
                 steps=(("orange", 0.001), ("red", 0.01))),
            stat("p99 latency", "End-to-end latency seen by clients, 99th percentile.",
                 target(quantile(0.99, "fleetgate_request_duration_seconds", g)), unit="s"),
            stat("Spend (24h)", "USD billed over the last 24 hours (settled cost of every request).",
                 target("sum(increase(fleetgate_spend_usd_total{" + g + "}[24h]))", instant=True),
                 unit="currencyUSD"),
            stat("Limit rejections/s", "429s from rate limits and exhausted budgets.",
                 target(rate("fleetgate_limited_total", n)), unit="reqps", steps=(("orange", 0.1),)),
            stat("Dependencies", "Redis and the store: while degraded the gateway serves with local limits "
                 "or its last registry snapshot.",
                 target(f"max(fleetgate_redis_degraded{{{n}}})", "Redis"),
                 target(f"max(fleetgate_store_degraded{{{n}}})", "Store"),
                 unit="none", mappings=DEGRADED, steps=(("red", 1),)),
        ]),
        ("Traffic", [
            timeseries("Requests/s by model", "Throughput per registry model.",
                       target(rate(requests, g, by="model"), "{{model}}"), unit="reqps"),
            timeseries("Requests/s by status", "HTTP status of every request (499 = client went away).",
                       target(rate(requests, g, by="status"), "{{status}}"), unit="reqps"),
        ]),
        ("Latency", [
            timeseries("Request latency", "End to end, as clients see it.",
                       *(target(quantile(q, "fleetgate_request_duration_seconds", g, by="model"),
                                f"p{round(q * 100)} {{{{model}}}}") for q in (0.5, 0.95, 0.99)), unit="s"),
            timeseries("Time to first token", "Streaming requests: time until the first byte reached the client.",
                       *(target(quantile(q, "fleetgate_time_to_first_token_seconds", g, by="model"),
                                f"p{round(q * 100)} {{{{model}}}}") for q in (0.5, 0.95)), unit="s"),
            timeseries("Gateway overhead", "Time spent in the gateway itself (latency minus upstream time).",
                       *(target(quantile(q, "fleetgate_gateway_overhead_seconds", n), f"p{round(q * 100)}")
                         for q in (0.5, 0.99)), unit="s"),
            timeseries("Tokens/s", "Prompt and completion tokens billed.",
                       target(rate("fleetgate_tokens_total", g, by="model, kind"), "{{kind}} {{model}}"),
                       unit="short"),
        ]),
        ("Errors", [
            timeseries("Error ratio by model (5xx)", "Failed requests over all requests, per model.",
                       target(ratio(rate(requests, f'{g}, status=~"5.."', by="model"), rate(requests, g, by="model")),
                              "{{model}}"), unit="percentunit", w=8, steps=(("red", 0.01),)),
            timeseries("Client errors by status (4xx)", "Bad requests, keys, models and limits (429).",
                       target(rate(requests, f'{g}, status=~"4.."', by="status"), "{{status}}"), unit="reqps", w=8),
            timeseries("Upstream trouble", "Pods misbehaving: retried elsewhere, ejected, too slow, garbage "
                       "answers, or no free connection.",
                       target(rate("fleetgate_upstream_retries_total", n), "retried"),
                       target(rate("fleetgate_endpoint_ejections_total", n), "ejected"),
                       target(rate("fleetgate_upstream_slow_total", n, by="stage"), "slow ({{stage}})"),
                       target(rate("fleetgate_upstream_garbage_total", n, by="kind"), "garbage ({{kind}})"),
                       target(rate("fleetgate_upstream_saturated_total", n), "saturated"), unit="reqps", w=8),
        ]),
        ("Spend and limits", [
            timeseries("Spend by model", "USD per hour at the current rate.",
                       target(f'{rate("fleetgate_spend_usd_total", g, by="model")} * 3600', "{{model}}"),
                       unit="currencyUSD", w=8),
            timeseries("Limit rejections by reason", "insufficient_quota = budget exhausted; "
                       "rate_limit_exceeded = requests or tokens per minute.",
                       target(rate("fleetgate_limited_total", n, by="reason"), "{{reason}}"), unit="reqps", w=8),
            timeseries("Budget soft-limit crossings by org", "Requests over an org's soft limit (alert threshold).",
                       target(rate("fleetgate_budget_soft_limit_total", n, by="org"), "{{org}}"), unit="reqps", w=8),
        ]),
        ("Usage accounting and dependencies", [
            timeseries("Usage lake lag", "Age of the oldest usage event not yet in Parquet: reports and "
                       "budget rebuilds are this far behind.",
                       target(f"max(fleetgate_lake_lag_seconds{{{n}}})", "lag"), unit="s", w=8,
                       steps=(("orange", 600), ("red", 1800))),
            timeseries("Usage accounting problems", "Usage events the sink refused (lost rows) and usage "
                       "reports refused from pods (billed at the reserved amount).",
                       target(rate("fleetgate_usage_events_total", n), "events lost"),
                       target(rate("fleetgate_upstream_bad_usage_total", n, by="reason"), "bad usage ({{reason}})"),
                       unit="reqps", w=8),
            timeseries("Registry cache", "Registry lookups on change: misses reload from the store.",
                       target(rate("fleetgate_registry_cache_total", n, by="result"), "{{result}}"), unit="ops", w=8),
        ]),
    ]
    return dashboard("fleetgate-gateway", "Fleetgate / Gateway",
                     "The gateway: requests, latency, errors, spend, budget and rate-limit rejections.",
                     variables, rows)


# --- SLOs and error budgets ----------------------------------------------------------------------------

# The objectives of ../rules/slo.yaml (its alerts compare burn rates against these budgets; a test checks
# that both agree): 99.9 % of requests without a 5xx, 99 % of requests within 10 s.
AVAILABILITY_BUDGET = 0.001
LATENCY_BUDGET = 0.01
LATENCY_THRESHOLD = "10.0"  # a bucket boundary of fleetgate_request_duration_seconds (le label)
SLO_WINDOW = "30d"
# Burn rates of the multi-window alerts: 14.4x pages (budget gone in 2 days), 6x is high (5 days).
BURN_RATES = (("orange", 6.0), ("red", 14.4))
SLO = 'environment=~"$environment", model=~"$model"'


def _slo_row(slo: str, objective: str, bad: str, budget_var: str, budget: float, recorded: str,
             bad_30d: str, all_30d: str) -> tuple[str, list[Panel]]:
    """Four panels of one SLO: attainment and budget left over the SLO window, burn rates, the SLI.

    `recorded` is the recording-rule prefix (window appended); `bad_30d` / `all_30d` count bad and all
    requests over the window from the raw counters, which is exact where averaging ratios is not.
    """
    by = "model, environment"
    bad_ratio = f"(sum by ({by}) ({bad_30d}) / clamp_min(sum by ({by}) ({all_30d}), 1e-9))"
    legend = "{{model}} {{environment}}"
    return (f"{slo}: {objective}", [
        stat(f"{slo} ({SLO_WINDOW})", f"Share of good requests over the last {SLO_WINDOW}; the objective is "
             f"{objective}.",
             target(f"1 - {bad_ratio}", legend, instant=True), unit="percentunit", w=6, h=6, decimals=3, base="red",
             minimum=None, steps=(("green", 1 - budget),)),
        stat(f"Error budget left ({SLO_WINDOW})", "1 - spent / allowed: at 0 % the budget is gone and risky "
             "changes (rollouts, promotions) should wait.",
             target(f"1 - {bad_ratio} / ${budget_var}", legend, instant=True), unit="percentunit", w=6, h=6, decimals=1,
             base="red", minimum=None, steps=(("orange", 0), ("green", 0.25))),
        timeseries("Burn rate", f"How many times faster than sustainable the budget burns (1 = used up in "
                   f"exactly {SLO_WINDOW}). The alerts fire when both windows of a pair exceed 14.4x (1h and 5m) "
                   "or 6x (6h and 30m).",
                   *(target(f"{recorded}{window}{{{SLO}}} / ${budget_var}", f"{window} {legend}")
                     for window in ("5m", "1h", "6h")),
                   unit="suffix:x", w=12, h=6, steps=BURN_RATES),
        timeseries("SLI: share of bad requests", f"Requests that {bad} (the recording rules of rules/slo.yaml); "
                   f"the red line is the budget ({budget:.1%}).",
                   *(target(f"{recorded}{window}{{{SLO}}}", f"{window} {legend}") for window in ("5m", "1h")),
                   unit="percentunit", w=24, h=7, steps=(("red", budget),)),
    ])


def slo_dashboard() -> dict[str, Any]:
    """Attainment, error budget and burn rates per model and environment (the SLO recording rules)."""
    errors = "fleetgate:request_errors:ratio_rate5m"
    variables = [
        query_variable("environment", "Environment", f"label_values({errors}, environment)"),
        query_variable("model", "Model", f'label_values({errors}{{environment=~"$environment"}}, model)'),
        constant_variable("availability_budget", "Availability error budget", AVAILABILITY_BUDGET),
        constant_variable("latency_budget", "Latency error budget", LATENCY_BUDGET),
    ]
    duration = "fleetgate_request_duration_seconds"
    seconds = f"{float(LATENCY_THRESHOLD):g} s"
    rows = [
        _slo_row("Availability", f"{1 - AVAILABILITY_BUDGET:.1%} of requests without a 5xx", "end with a 5xx",
                 "availability_budget", AVAILABILITY_BUDGET, "fleetgate:request_errors:ratio_rate",
                 f'increase(fleetgate_requests_total{{{SLO}, status=~"5.."}}[{SLO_WINDOW}])',
                 f"increase(fleetgate_requests_total{{{SLO}}}[{SLO_WINDOW}])"),
        _slo_row("Latency", f"{1 - LATENCY_BUDGET:.0%} of requests within {seconds}", f"take longer than {seconds}",
                 "latency_budget", LATENCY_BUDGET, "fleetgate:request_slow:ratio_rate",
                 f"(increase({duration}_count{{{SLO}}}[{SLO_WINDOW}]) - ignoring (le) "
                 f'increase({duration}_bucket{{{SLO}, le="{LATENCY_THRESHOLD}"}}[{SLO_WINDOW}]))',
                 f"increase({duration}_count{{{SLO}}}[{SLO_WINDOW}])"),
    ]
    return dashboard("fleetgate-slo", "Fleetgate / SLOs and error budgets",
                     "Availability and latency SLOs per model and environment: attainment, budget left, burn rate.",
                     variables, rows)


# --- building ------------------------------------------------------------------------------------------

DASHBOARDS = {
    "fleetgate-vllm.json": vllm_dashboard,
    "fleetgate-gateway.json": gateway_dashboard,
    "fleetgate-slo.json": slo_dashboard,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    """Deterministic JSON text (sorted keys, trailing newline), so `--check` compares bytes."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write (default: next to this file)")
    args = parser.parse_args(argv)
    # A JSON file no code builds any more is stale too (the chart would still ship it).
    stale = sorted(p.name for p in args.out.glob("*.json") if p.name not in DASHBOARDS) if args.check else []
    for name, build in DASHBOARDS.items():
        path, text = args.out / name, render(build)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run python helm/observability/dashboards/build.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
