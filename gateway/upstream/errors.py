"""Errors of the upstream client, in the product's hierarchy (502/503/504 if they ever reach a client).

Messages never carry endpoint URLs or payloads; the cause is chained for the logs.
"""

from __future__ import annotations

from gateway.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout


class UpstreamConnectError(UpstreamError):
    """Connection refused or reset before any response byte, DNS failure, TLS failure."""

    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    """Malformed response, or the connection closed in the middle of one."""

    code = "upstream_protocol_error"


class UpstreamTimeoutError(UpstreamTimeout):
    """Connecting took longer than connect_timeout_s, or the pod sent nothing for read_timeout_s."""


class UpstreamSaturated(ServiceUnavailable):
    """Every connection to the pod was busy (max_connections_per_host) for queue_timeout_s.

    Nothing was sent, so the request may safely go to another endpoint.
    """

    code = "upstream_saturated"

    def __init__(self, limit: int, waited_s: float) -> None:
        super().__init__(
            f"All {limit} connections to the model endpoint are busy and none came free within "
            f"{waited_s:g} s (upstream_max_connections_per_host).",
            headers={"Retry-After": "1"},
        )
        self.limit = limit
