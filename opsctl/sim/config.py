"""The simulator's settings: one frozen object built at the edge (CLI or test).

Validation lives here so the CLI and `create_sim_app` reject the same bad values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.errors import ConfigError

USAGE_LIES = ("huge", "string", "list", "negative", "float", "missing")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How one simulated vLLM pod behaves.

    Names: `model` is what vLLM's --model would load (the `root` in /v1/models); the pod
    serves it as `served_model_name` (vLLM's --served-model-name: one name or several; default
    `model`) and answers any other requested name with vLLM's 404 NotFoundError.
    Latency: the first token is emitted `ttft_ms` after the request is admitted, then one
    token every 1/`tokens_per_s` seconds (0 = all at once). Faults: each inference request
    draws one number from the seeded RNG; below `error_rate` it gets a 500, below
    `error_rate + hang_rate` it never gets an answer, below `error_rate + hang_rate +
    garbage_rate` it gets a 200 whose body is not JSON (an HTML error page; on a stream, one
    such line instead of any SSE event). With `hang_after_headers` every inference request
    hangs: a stream gets its 200 and headers, then never an event; a unary request never
    gets a byte (as with hang_rate 1). `usage_lie` makes every chat/completion answer report
    a bad usage (unary body and stream usage chunk); for a true count of 12, completion_tokens
    is "huge" 1e9, "string" "12", "list" [12], "negative" -12, "float" 12.5, or "missing": no
    usage object at all.
    For `slow_start_s` seconds after start `/health` and every request answer 503. After
    `crash_after` inference requests the process exits (in-process apps turn into a dead
    engine: 503 everywhere). At most `max_num_seqs` requests run at once; the rest wait
    (vLLM's scheduler limit).
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    slow_start_s: float = 0.0
    crash_after: int | None = None
    seed: int | None = None
    max_model_len: int = 8192
    embedding_dim: int = 64
    max_num_seqs: int = 256
    garbage_rate: float = 0.0
    usage_lie: str | None = None
    hang_after_headers: bool = False
    served_model_name: str | Sequence[str] | None = None
    served_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = self.served_model_name
        if names is None or (not isinstance(names, str) and len(names) == 0):
            served: tuple[str, ...] = (self.model,)
        elif isinstance(names, str):
            served = (names,)
        else:
            served = tuple(names)
        object.__setattr__(self, "served_names", served)  # frozen: set once, read per request
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field.

        Raises:
            ConfigError: a value is out of range (rates outside [0, 1], negative times, ...).
        """
        if not self.model or not self.model.strip():
            raise ConfigError("model: must be a non-empty name", param="model")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: {self.port} is not a TCP port (1-65535)", param="port")
        for name in ("ttft_ms", "tokens_per_s", "slow_start_s"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):  # also rejects NaN
                raise ConfigError(f"{name}: {value} must be a finite number >= 0", param=name)
        if not all(isinstance(name, str) and name.strip() for name in self.served_names):
            raise ConfigError("served_model_name: every name must be a non-empty string", param="served_model_name")
        for name in ("error_rate", "hang_rate", "garbage_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: {value} must be between 0 and 1", param=name)
        if self.error_rate + self.hang_rate + self.garbage_rate > 1.0:
            total = self.error_rate + self.hang_rate + self.garbage_rate
            raise ConfigError(f"error_rate + hang_rate + garbage_rate: {total:g} must not exceed 1",
                              param="garbage_rate" if self.garbage_rate else "hang_rate")
        if self.usage_lie is not None and self.usage_lie not in USAGE_LIES:
            raise ConfigError(f"usage_lie: {self.usage_lie!r} must be one of {', '.join(USAGE_LIES)}",
                              param="usage_lie")
        if self.crash_after is not None and self.crash_after < 1:
            raise ConfigError(f"crash_after: {self.crash_after} must be >= 1", param="crash_after")
        for name in ("max_model_len", "embedding_dim", "max_num_seqs"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}: {value} must be >= 1", param=name)
