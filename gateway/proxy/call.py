"""One inference request's bookkeeping, from authentication to its usage event."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth.authenticator import KeyInfo
from gateway.http.middleware import CLIENT_CLOSED
from gateway.limits.base import Reservation
from gateway.proxy.requests import InferenceRequest
from gateway.routing.balancer import EndpointState
from gateway.routing.registry import Route

__all__ = ["CLIENT_CLOSED", "Call"]


@dataclass(slots=True)
class Call:
    """Per-request bookkeeping, turned into the usage event and the access-log fields at the end.

    `route` is the model the client asked for once resolved (it names metric labels: never the
    client's raw string); `served` is the model of the endpoint that answered (a fallback, maybe).
    """

    request_id: str
    ts_us: int
    t0: float
    info: KeyInfo | None = None
    model: str | None = None  # as the client sent it (the lake's `model` column)
    route: Route | None = None
    req: InferenceRequest | None = None
    served: Route | None = None
    state: EndpointState | None = None
    stream: bool = False
    status: int = 0
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0
    ttft_ms: float | None = None
    upstream_ms: float = 0.0
    t_upstream: float = 0.0  # perf_counter when the upstream request was sent
    reservation: Reservation | None = None
    user: str | None = None
    done: bool = False
    extra_headers: dict[str, str] = field(default_factory=dict)
