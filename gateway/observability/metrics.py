"""Prometheus metrics of the gateway, safe with several worker processes.

With `PROMETHEUS_MULTIPROC_DIR` set (done by `opsctl gateway serve --workers N`), values
live in per-process files and `/metrics` aggregates them; otherwise each app has its own
registry. Labelled children are cached, since `.labels()` costs more than the increment.
Label values come only from bounded sets (registry names, status codes, constants), never
from client input; rendering runs in a thread so a scrape never freezes the event loop (it
still shares the GIL with it: requests slow down during a big render, they are not held up).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from gateway.limits.base import LimiterHooks

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _log_buckets(low: float, high: float, factor: float) -> tuple[float, ...]:
    """Upper bounds low, low*factor, ... up to `high` (the last one), rounded to microseconds."""
    bounds = []
    bound = low
    while bound < high:
        bounds.append(round(bound, 6))
        bound *= factor
    return (*bounds, high)


# Release analysis compares p95s of two releases over a few hundred requests: fine log-scale
# buckets (each 25 % wider than the previous) keep the interpolation error of a quantile small.
RELEASE_BUCKETS = _log_buckets(0.001, 120.0, 1.25)
TRAFFIC = ("live", "shadow")
OUTCOMES = ("ok", "client_error", "error")


def _boot_id() -> str:
    """Names the life of these counters: one process, or (multiprocess) one metrics directory, which
    `opsctl gateway serve --workers N` creates per run and every worker, restarted ones too, shares."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return uuid.uuid4().hex[:16]
    seed = f"{os.path.realpath(directory)}:{os.stat(directory).st_ino}"
    return hashlib.blake2b(seed.encode(), digest_size=8).hexdigest()


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.boot_id = _boot_id()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("fleetgate_requests", "Requests served, by outcome.",
                                ["model", "environment", "endpoint", "status"], registry=r)
        self.latency = Histogram("fleetgate_request_duration_seconds", "End-to-end request latency.",
                                 ["model", "environment"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("fleetgate_time_to_first_token_seconds", "Time to first streamed byte.",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("fleetgate_gateway_overhead_seconds",
                                  "Time spent in the gateway itself (latency minus upstream time).",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("fleetgate_tokens", "Tokens processed.", ["model", "kind"], registry=r)
        self.spend = Counter("fleetgate_spend_usd", "Spend billed to orgs, in USD.", ["model"], registry=r)
        self.retries = Counter("fleetgate_upstream_retries", "Requests retried on another endpoint.",
                               ["model"], registry=r)
        self.ejections = Counter("fleetgate_endpoint_ejections", "Endpoints ejected after failures.",
                                 ["endpoint"], registry=r)
        self.registry_cache = Counter("fleetgate_registry_cache", "Registry cache lookups on change.",
                                      ["result"], registry=r)
        self.limited = Counter("fleetgate_limited", "Requests refused by rate limits or budgets.",
                               ["reason"], registry=r)
        self.soft_limit = Counter("fleetgate_budget_soft_limit", "Requests over a budget's soft limit.",
                                  ["org"], registry=r)
        # Pod misbehaviour, labelled by bounded reason sets (see gateway/proxy/forward.py, billing.py).
        self.upstream_slow = Counter("fleetgate_upstream_slow", "Answers abandoned past their first-byte deadline.",
                                     ["stage"], registry=r)
        self.upstream_garbage = Counter("fleetgate_upstream_garbage",
                                        "200 answers that were not JSON / not an event stream.", ["kind"], registry=r)
        self.upstream_saturated = Counter("fleetgate_upstream_saturated",
                                          "Requests that found no free connection to a pod in time (tried elsewhere).",
                                          registry=r)
        self.bad_usage = Counter("fleetgate_upstream_bad_usage",
                                 "Usage reports refused (billed at the reserved amounts).", ["reason"], registry=r)
        self.usage_events = Counter("fleetgate_usage_events", "Usage events the sink refused (lost rows).",
                                    ["result"], registry=r)
        gauge_kw: dict[str, Any] = {"multiprocess_mode": "max"} if self.multiprocess else {}
        self.redis_degraded = Gauge("fleetgate_redis_degraded", "1 while Redis is unreachable.",
                                    registry=r, **gauge_kw)
        self.store_degraded = Gauge("fleetgate_store_degraded", "1 while the store is unreachable.",
                                    registry=r, **gauge_kw)
        self.lake_lag = Gauge("fleetgate_lake_lag_seconds",
                              "Age of the oldest usage event not yet written to Parquet (0: none waiting).",
                              registry=r, **gauge_kw)
        # Per release (= one deployer release: bounded by the registry), per upstream attempt; the
        # admin analysis API (gateway/admin/analysis.py) reads these back.
        release_labels = ["model", "environment", "release", "traffic"]
        self.release_requests = Counter(
            "fleetgate_release_requests",
            "Upstream attempts per release (live: each try, retries included; shadow: each mirrored copy), "
            "by outcome (ok, client_error = 4xx, error = 5xx / failure / time-out).",
            [*release_labels, "outcome"], registry=r)
        self.release_latency = Histogram(
            "fleetgate_release_latency_seconds",
            "Upstream time of successful attempts per release (send to last byte).",
            release_labels, buckets=RELEASE_BUCKETS, registry=r)
        self.release_ttft = Histogram(
            "fleetgate_release_ttft_seconds",
            "Upstream time to the first event of successful streamed attempts per release.",
            release_labels, buckets=RELEASE_BUCKETS, registry=r)
        self.shadow_requests = Counter("fleetgate_shadow_requests", "Mirrored (shadow) requests sent, by outcome.",
                                       ["model", "environment", "release", "outcome"], registry=r)
        self.shadow_skipped = Counter(
            "fleetgate_shadow_skipped",
            "Mirrored copies not sent: too many shadows in flight, or no free connection to the pod.",
            ["model", "environment", "release"], registry=r)
        self._children: dict[tuple, Any] = {}
        self._series: dict[tuple[str, str, str, str], ReleaseSeries] = {}
        self._rendering: asyncio.Future[bytes] | None = None

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def release_series(self, model: str, environment: str, release: str, traffic: str) -> ReleaseSeries:
        """The cached children of one release's series (one dict lookup on the request path)."""
        key = (model, environment, release, traffic)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ReleaseSeries(self, model, environment, release, traffic)
        return series

    def release_families(self) -> list[Metric]:
        """The release metric families as collected now: this process's, or every worker's summed
        (multiprocess). Blocking (reads files with several workers): run it in a thread."""
        if not self.multiprocess:
            return [*self.release_requests.collect(), *self.release_latency.collect(), *self.release_ttft.collect()]
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        names = {"fleetgate_release_requests", "fleetgate_release_latency_seconds", "fleetgate_release_ttft_seconds"}
        return [family for family in registry.collect() if family.name in names]

    def fleet_families(self) -> list[Metric]:
        """The per-model families the fleet overview reads (requests by status, end-to-end latency, per-release
        TTFT), collected now; every worker's summed when multiprocess. Blocking: run it in a thread."""
        if not self.multiprocess:
            return [*self.requests.collect(), *self.latency.collect(), *self.release_ttft.collect()]
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        names = {"fleetgate_requests", "fleetgate_request_duration_seconds", "fleetgate_release_ttft_seconds"}
        return [family for family in registry.collect() if family.name in names]

    async def render_async(self) -> bytes:
        """`render()` in a worker thread; concurrent scrapes share one rendering.

        prometheus_client takes each metric's lock while collecting, so the event loop can keep
        incrementing meanwhile; sharing the rendering keeps a flood of scrapes at one thread's work.
        """
        rendering = self._rendering
        if rendering is None:
            rendering = self._rendering = asyncio.get_running_loop().run_in_executor(None, self.render)
            rendering.add_done_callback(self._rendered)
        # shield: a scraper that goes away must not cancel the rendering the others wait for
        return await asyncio.shield(rendering)

    def _rendered(self, rendering: asyncio.Future[bytes]) -> None:
        self._rendering = None
        if not rendering.cancelled():
            rendering.exception()  # marks it retrieved when every waiter went away

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ReleaseSeries:
    """One release's live or shadow series, children resolved once.

    Only successful attempts feed the latency and TTFT histograms: a fast 500 must not make a
    release look quick (its error rate judges it).
    """

    __slots__ = ("ok", "client_error", "error", "latency", "ttft", "shadow")

    def __init__(self, metrics: Metrics, model: str, environment: str, release: str, traffic: str) -> None:
        labels = (model, environment, release, traffic)
        self.ok = metrics.release_requests.labels(*labels, "ok")
        self.client_error = metrics.release_requests.labels(*labels, "client_error")
        self.error = metrics.release_requests.labels(*labels, "error")
        self.latency = metrics.release_latency.labels(*labels)
        self.ttft = metrics.release_ttft.labels(*labels)
        # Shadow copies are also counted on their own (fleetgate_shadow_requests_total).
        self.shadow = ({outcome: metrics.shadow_requests.labels(model, environment, release, outcome)
                        for outcome in OUTCOMES} if traffic == "shadow" else None)

    def record(self, outcome: str, latency_s: float | None = None, ttft_s: float | None = None) -> None:
        """Count one attempt; `outcome` is one of OUTCOMES."""
        if outcome == "ok":
            self.ok.inc()
            if latency_s is not None:
                self.latency.observe(latency_s)
            if ttft_s is not None:
                self.ttft.observe(ttft_s)
        elif outcome == "error":
            self.error.inc()
        else:
            self.client_error.inc()
        if self.shadow is not None:
            self.shadow[outcome].inc()


def outcome_of(status: int) -> str:
    """The release outcome of an upstream HTTP status. A pod's 404 means it does not serve the model
    (the gateway tries another endpoint): the pod's failure, not the client's."""
    if status < 400:
        return "ok"
    if status >= 500 or status == 404:
        return "error"
    return "client_error"


class LimiterMetrics(LimiterHooks):
    """Limiter observations → metrics (cheap: called on the request path)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def degraded_changed(self, degraded: bool) -> None:
        self._metrics.redis_degraded.set(1 if degraded else 0)
