"""Admin API: `GET /admin/v1/fleet`, the whole fleet in one answer, for live dashboards (`opsctl tui`).

Every model × environment this process routes, with its endpoints as the router sees them (probe verdicts,
ejections, in-flight counts, the pods' queue and KV-cache figures) and cumulative traffic counters since boot
(requests by outcome, end-to-end latency and live TTFT histograms). One call per refresh, whatever the fleet's
size: a client turns two answers into rates and quantiles (opsctl/fleet.py), the gateway never keeps windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import Metric

from gateway import appkeys
from gateway.admin.analysis import endpoint_json
from gateway.admin.common import reply
from gateway.admin.inputs import query_str
from gateway.admin.orgs import check_model_name, check_name
from gateway.errors import InvalidRequest
from gateway.observability.buckets import bounds_ms, bucket_index, per_bucket
from gateway.observability.metrics import LATENCY_BUCKETS, RELEASE_BUCKETS
from gateway.routing.registry import Route

QUERY_PARAMS = ("model", "env")
LATENCY_BOUNDS_MS = bounds_ms(LATENCY_BUCKETS)
TTFT_BOUNDS_MS = bounds_ms(RELEASE_BUCKETS)  # the release histograms' (as /admin/v1/analysis gives them)
_LATENCY_INDEX = bucket_index(LATENCY_BUCKETS)
_TTFT_INDEX = bucket_index(RELEASE_BUCKETS)


def _empty_counters() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "client_errors": 0, "latency_sum_ms": 0.0, "ttft_count": 0,
            "latency_buckets": [0.0] * len(LATENCY_BOUNDS_MS), "ttft_buckets": [0.0] * len(TTFT_BOUNDS_MS)}


def _add_sample(entry: dict[str, Any], name: str, labels: dict[str, str], value: float) -> None:
    """Fold one collected sample into its model × environment's counters (unknown samples are ignored)."""
    if name == "fleetgate_requests_total":
        status = labels.get("status", "")
        entry["requests"] += int(value)
        if status.isdigit() and int(status) >= 500:
            entry["errors"] += int(value)
        elif status.isdigit() and int(status) >= 400:
            entry["client_errors"] += int(value)
    elif name == "fleetgate_request_duration_seconds_sum":
        entry["latency_sum_ms"] += value * 1000.0
    elif name == "fleetgate_request_duration_seconds_bucket":
        index = _LATENCY_INDEX.get(float(labels.get("le", "nan")))
        if index is not None:
            entry["latency_buckets"][index] += value
    elif labels.get("traffic") != "live":
        return  # shadow copies never reached a client
    elif name == "fleetgate_release_ttft_seconds_count":
        entry["ttft_count"] += int(value)
    elif name == "fleetgate_release_ttft_seconds_bucket":
        index = _TTFT_INDEX.get(float(labels.get("le", "nan")))
        if index is not None:  # not one of our bounds (a metric of an older layout): ignore
            entry["ttft_buckets"][index] += value


def fleet_counters(families: Iterable[Metric], keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Cumulative counters per (model, environment) in `keys`, from the collected families, in one pass.

    Requests count by HTTP status: errors are 5xx, client errors 4xx. Latency is end to end (every request);
    TTFT is the live traffic's upstream time to the first streamed event, summed over releases. Histogram
    buckets leave as counts per bucket (not cumulative), as `/admin/v1/analysis` gives them.
    """
    counters = {key: _empty_counters() for key in keys}
    for family in families:
        for sample in family.samples:
            entry = counters.get((sample.labels.get("model", ""), sample.labels.get("environment", "")))
            if entry is not None:
                _add_sample(entry, sample.name, sample.labels, sample.value)
    for entry in counters.values():
        entry["latency_sum_ms"] = round(entry["latency_sum_ms"], 3)
        entry["latency_buckets"] = per_bucket(entry["latency_buckets"])
        entry["ttft_buckets"] = per_bucket(entry["ttft_buckets"])
    return counters


def _summary(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """Ready = the router would send a request there now (status ready, weight > 0, probe healthy, not ejected)."""
    waiting = [e["waiting"] for e in endpoints if e["waiting"] is not None]
    running = [e["running"] for e in endpoints if e["running"] is not None]
    kv = [e["kv_usage"] for e in endpoints if e["kv_usage"] is not None]
    return {
        "total": len(endpoints),
        "ready": sum(1 for e in endpoints
                     if e["status"] == "ready" and e["weight"] > 0 and e["healthy"] and not e["ejected"]),
        "healthy": sum(1 for e in endpoints if e["healthy"]),
        "ejected": sum(1 for e in endpoints if e["ejected"]),
        "in_flight": sum(e["in_flight"] for e in endpoints),
        "waiting": sum(waiting) if waiting else None,
        "running": sum(running) if running else None,
        "kv_usage_max": max(kv) if kv else None,
    }


def _model_json(route: Route, counters: dict[str, Any]) -> dict[str, Any]:
    endpoints = [endpoint_json(state.endpoint, state) for state in route.states]
    return {"model": route.model.name, "environment": route.model.environment, "status": route.model.status,
            "endpoints": _summary(endpoints), "endpoint_list": endpoints, **counters}


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    for name in request.query:
        if name not in QUERY_PARAMS:
            raise InvalidRequest(f"Unknown query parameter {name[:64]!r}: expected model or env.", param=name[:64])
    model = query_str(request, "model")
    env = query_str(request, "env")
    return (check_model_name(model, "model") if model else None, check_name(env, "env") if env else None)


async def fleet(request: web.Request) -> web.Response:
    """Every routed model × environment (optionally one `model`, one `env`) with endpoints and counters."""
    model, env = _filters(request)
    app = request.app
    routes = sorted((r for r in app[appkeys.REGISTRY].routes(env) if model is None or r.model.name == model),
                    key=lambda r: (r.model.name, r.model.environment))
    metrics = app[appkeys.METRICS]
    keys = {(r.model.name, r.model.environment) for r in routes}

    def collect() -> dict[tuple[str, str], dict[str, Any]]:
        # With several workers the figures are read from every worker's files: off the event loop.
        return fleet_counters(metrics.fleet_families(), keys)

    counters = await asyncio.to_thread(collect) if keys else {}
    return reply({
        "now": datetime.now(UTC).isoformat(), "boot_id": metrics.boot_id,
        "latency_bounds_ms": LATENCY_BOUNDS_MS, "ttft_bounds_ms": TTFT_BOUNDS_MS,
        "models": [_model_json(r, counters[(r.model.name, r.model.environment)]) for r in routes],
    })


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/v1/fleet", fleet)
