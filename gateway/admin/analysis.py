"""Admin API for rollouts' data-plane checks: per-release traffic figures and an endpoint smoke test.

`GET /admin/v1/analysis` reads the release metrics back (every worker's, summed), so the rollout
analyzer compares a canary's errors, latency and TTFT with stable's from two snapshots;
`POST /admin/v1/endpoints/{id}/smoke` sends a few real requests to one endpoint before it gets traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client.metrics_core import Metric

from gateway import appkeys
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import field, only_fields, path, query_str
from gateway.admin.orgs import check_model_name, check_name
from gateway.errors import InvalidRequest
from gateway.observability.buckets import bounds_ms, bucket_index, per_bucket
from gateway.observability.metrics import RELEASE_BUCKETS, TRAFFIC
from gateway.proxy.smoke import SMOKE_KINDS, default_kind, smoke_test
from gateway.routing.balancer import EndpointState
from gateway.store.models import Endpoint

SMOKE_FIELDS = ("requests", "kind", "timeout_s")
MAX_SMOKE_REQUESTS = 20
MAX_SMOKE_TIMEOUT_S = 600.0
BUCKET_BOUNDS_MS = bounds_ms(RELEASE_BUCKETS)  # the last one None: +Inf
_BUCKET_INDEX = bucket_index(RELEASE_BUCKETS)
_OUTCOME_FIELD = {"error": "errors", "client_error": "client_errors"}


def _empty() -> dict[str, Any]:
    buckets = len(BUCKET_BOUNDS_MS)
    return {"requests": 0, "errors": 0, "client_errors": 0, "latency_buckets": [0] * buckets,
            "ttft_buckets": [0] * buckets, "ttft_count": 0, "latency_sum_ms": 0.0}


def release_stats(families: Iterable[Metric], model: str, environment: str) -> dict[str, dict[str, dict]]:
    """{release: {"live": S, "shadow": S}} of one model from collected release metric families.

    Histogram buckets arrive cumulative across buckets (Prometheus `le`); they leave as counts per
    bucket, so the analyzer can diff two snapshots bucket by bucket.
    """
    stats: dict[str, dict[str, dict]] = {}
    cumulative: dict[tuple[str, str, str], list[float]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        if labels.get("model") != model or labels.get("environment") != environment:
            return None
        traffic = labels.get("traffic")
        if traffic not in TRAFFIC:
            return None
        per_release = stats.setdefault(labels["release"], {t: _empty() for t in TRAFFIC})
        return per_release[traffic]

    for family in families:
        for sample in family.samples:
            s = entry(sample.labels)
            if s is None:
                continue
            name, value = sample.name, sample.value
            if name == "fleetgate_release_requests_total":
                s["requests"] += int(value)
                outcome = _OUTCOME_FIELD.get(sample.labels.get("outcome", ""))
                if outcome is not None:
                    s[outcome] += int(value)
            elif name == "fleetgate_release_latency_seconds_sum":
                s["latency_sum_ms"] += value * 1000.0
            elif name == "fleetgate_release_ttft_seconds_count":
                s["ttft_count"] += int(value)
            elif name.endswith("_bucket"):
                index = _BUCKET_INDEX.get(float(sample.labels.get("le", "nan")))
                if index is None:
                    continue  # not one of our bounds (a metric of an older layout): ignore
                kind = "latency_buckets" if name.startswith("fleetgate_release_latency") else "ttft_buckets"
                key = (sample.labels["release"], sample.labels["traffic"], kind)
                cumulative.setdefault(key, [0.0] * len(BUCKET_BOUNDS_MS))[index] += value
    for (release, traffic, kind), counts in cumulative.items():
        stats[release][traffic][kind] = per_bucket(counts)
    for per_release in stats.values():
        for s in per_release.values():
            s["latency_sum_ms"] = round(s["latency_sum_ms"], 3)
    return stats


def endpoint_json(endpoint: Endpoint, state: EndpointState | None) -> dict[str, Any]:
    """The endpoint as this process routes it: the router's copy of its record when it has one (so a caller
    waiting for a registry change to take effect sees when it did), else the store's with `routed` false."""
    record = state.endpoint if state is not None else endpoint
    return {"id": record.id, "url": record.url, "release": record.release, "status": record.status,
            "weight": record.weight, "mirror_percent": record.mirror_percent, "routed": state is not None,
            "in_flight": state.in_flight if state else 0, "healthy": state.healthy if state else True,
            "ejected": state.ejected if state else False,
            # What the prober last read from the pod (/v1/models, /metrics); None until it did.
            "served_model": state.served_model if state else None, "waiting": state.waiting if state else None,
            "running": state.running if state else None, "kv_usage": state.kv_usage if state else None}


def _required_query(request: web.Request, name: str) -> str:
    value = query_str(request, name)
    if value is None:
        raise InvalidRequest(f"query parameter '{name}' is required.", param=name)
    return value


async def analysis(request: web.Request) -> web.Response:
    """Per-release request, error, latency and TTFT counters of one model (live and shadow traffic)."""
    name = check_model_name(_required_query(request, "model"), "model")
    env = check_name(_required_query(request, "env"), "env")
    app = request.app
    model = await app[appkeys.STORE].get_model(name, env)
    endpoints = await app[appkeys.STORE].list_endpoints(model.id)
    metrics = app[appkeys.METRICS]
    # With several workers the figures are read from every worker's files: off the event loop.
    families = await asyncio.to_thread(metrics.release_families)
    releases = release_stats(families, name, env)
    for endpoint in endpoints:
        releases.setdefault(endpoint.release, {t: _empty() for t in TRAFFIC})
    route = app[appkeys.REGISTRY].get(name, env)
    states = {s.id: s for s in route.states} if route is not None else {}
    return reply({
        "model": name, "environment": env, "boot_id": metrics.boot_id, "bucket_bounds_ms": BUCKET_BOUNDS_MS,
        "releases": dict(sorted(releases.items())),
        "endpoints": [endpoint_json(e, states.get(e.id)) for e in endpoints],
    })


async def smoke(request: web.Request) -> web.Response:
    """Send a few real requests straight to one endpoint, whatever its status; never billed."""
    endpoint_id = path(request, "endpoint_id")
    body = await json_body(request) if request.can_read_body else {}
    only_fields(body, SMOKE_FIELDS)
    requests = field(body, "requests", int, default=3, minimum=1, maximum=MAX_SMOKE_REQUESTS)
    kind = field(body, "kind", str, choices=SMOKE_KINDS)
    timeout_s = field(body, "timeout_s", float, default=60.0, minimum=1, maximum=MAX_SMOKE_TIMEOUT_S)
    app = request.app
    store = app[appkeys.STORE]
    endpoint = await store.get_endpoint(endpoint_id)
    model = await store.get_model_by_id(endpoint.model_id)
    route = app[appkeys.REGISTRY].get(model.name, model.environment)
    state = next((s for s in route.states if s.id == endpoint.id), None) if route is not None else None
    served = state.served_model if state is not None and state.served_model else model.name
    dataplane = app[appkeys.DATAPLANE]
    assert dataplane.upstream is not None  # started with the app
    results = await smoke_test(dataplane.upstream, endpoint.url, served, kind=kind or default_kind(model.metadata),
                               requests=requests, timeout_s=timeout_s)
    return reply({"passed": all(r.passed for r in results), "endpoint_id": endpoint.id, "release": endpoint.release,
                  "results": [r.to_dict() for r in results]})


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/v1/analysis", analysis)
    app.router.add_post("/admin/v1/endpoints/{endpoint_id}/smoke", smoke)
