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
import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.limits.base import LimiterHooks

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
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
        self._children: dict[tuple, Any] = {}
        self._rendering: asyncio.Future[bytes] | None = None

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

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


class LimiterMetrics(LimiterHooks):
    """Limiter observations → metrics (cheap: called on the request path)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def degraded_changed(self, degraded: bool) -> None:
        self._metrics.redis_degraded.set(1 if degraded else 0)
