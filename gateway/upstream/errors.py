"""Errors of the upstream client, in the product's hierarchy (502/504 if they ever reach a client).

Messages never carry endpoint URLs or payloads; the cause is chained for the logs.
"""

from __future__ import annotations

from gateway.errors import UpstreamError, UpstreamTimeout


class UpstreamConnectError(UpstreamError):
    """Connection refused or reset before any response byte, DNS failure, TLS failure."""

    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    """Malformed response, or the connection closed in the middle of one."""

    code = "upstream_protocol_error"


class UpstreamTimeoutError(UpstreamTimeout):
    """Connecting took longer than connect_timeout_s, or the pod sent nothing for read_timeout_s."""
