"""What one load-generator run should do, validated once before any socket opens.

`BenchConfig.validate()` raises `InvalidRequest` (exit 2 in the CLI) with one readable line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from gateway.errors import InvalidRequest

DEFAULT_PROMPT = "Say hello in one short sentence."
DEFAULT_MAX_IN_FLIGHT = 2048


class Endpoint(str, Enum):
    chat = "chat"
    completions = "completions"
    embeddings = "embeddings"

    @property
    def path(self) -> str:
        return {
            Endpoint.chat: "/chat/completions",
            Endpoint.completions: "/completions",
            Endpoint.embeddings: "/embeddings",
        }[self]


@dataclass(frozen=True)
class BenchConfig:
    """One run. `rate` set = open loop (arrivals at fixed intervals); else closed loop.

    `concurrency` is the number of workers in closed loop; in open loop it is unused and the
    in-flight cap is `max_in_flight` (arrivals past it are dropped and counted).
    """

    url: str
    model: str
    concurrency: int = 8
    duration_s: float = 10.0
    warmup_s: float = 1.0
    rate: float | None = None
    stream: bool = False
    max_tokens: int = 16
    api_key: str | None = None
    prompt: str = DEFAULT_PROMPT
    endpoint: Endpoint = Endpoint.chat
    timeout_s: float = 60.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def target_url(self) -> str:
        """The full request URL: URL as given if it already names the endpoint, else base + /v1 + path."""
        base = self.url.rstrip("/")
        path = self.endpoint.path
        if base.endswith(path):
            return base
        if base.endswith("/v1"):
            return base + path
        return base + "/v1" + path

    @property
    def connection_limit(self) -> int:
        return self.max_in_flight if self.open_loop else self.concurrency

    def validate(self) -> BenchConfig:
        """Check every field; return self so calls chain.

        Raises:
            InvalidRequest: naming the bad option and value.
        """
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"URL must be http(s)://host[:port][/path], got {self.url!r}", param="url")
        if not self.model.strip():
            raise InvalidRequest("--model must not be empty", param="model")
        if self.concurrency < 1:
            raise InvalidRequest(f"--concurrency must be >= 1, got {self.concurrency}", param="concurrency")
        if self.duration_s <= 0:
            raise InvalidRequest(f"--duration must be > 0 seconds, got {self.duration_s}", param="duration")
        if self.warmup_s < 0:
            raise InvalidRequest(f"--warmup must be >= 0 seconds, got {self.warmup_s}", param="warmup")
        if self.rate is not None and self.rate <= 0:
            raise InvalidRequest(f"--rate must be > 0 requests/s, got {self.rate}", param="rate")
        if self.max_tokens < 1:
            raise InvalidRequest(f"--max-tokens must be >= 1, got {self.max_tokens}", param="max_tokens")
        if self.timeout_s <= 0:
            raise InvalidRequest(f"--timeout must be > 0 seconds, got {self.timeout_s}", param="timeout")
        if self.max_in_flight < 1:
            raise InvalidRequest(f"--max-in-flight must be >= 1, got {self.max_in_flight}", param="max_in_flight")
        if self.stream and self.endpoint is Endpoint.embeddings:
            raise InvalidRequest("--stream does not apply to --endpoint embeddings", param="stream")
        if self.api_key is not None and (not self.api_key or any(c in self.api_key for c in "\r\n ")):
            raise InvalidRequest("--api-key must be a non-empty token without spaces", param="api_key")
        return self
