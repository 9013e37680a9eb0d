"""A lean pooled HTTP/1.1 client for the gateway's upstream calls (gateway -> vLLM pods).

aiohttp's ClientSession costs ~30% of a proxied request's CPU; this sends one POST per call
over a per-host LIFO keep-alive pool, one asyncio.Protocol per connection, parsed by httptools.
"""

from gateway.upstream.connection import BUFFER_LIMIT, UpstreamResponse
from gateway.upstream.errors import (
           UpstreamConnectError,
           UpstreamProtocolError,
           UpstreamSaturated,
           UpstreamTimeoutError,
)
from gateway.upstream.hosts import HostStats
from gateway.upstream.pool import PoolStats, UpstreamPool

__all__ = ["BUFFER_LIMIT", "HostStats", "PoolStats", "UpstreamConnectError", "UpstreamPool",
           "UpstreamProtocolError", "UpstreamResponse", "UpstreamSaturated", "UpstreamTimeoutError"]
