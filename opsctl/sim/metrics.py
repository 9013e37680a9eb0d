"""vLLM's Prometheus metrics for the simulator, kept in plain ints/floats and rendered by hand.

The hot path is a few additions and one bisect per request; the text is built only on scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# vLLM's own bucket boundaries (vllm/v1/metrics/loggers.py), in seconds.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
E2E_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)
FINISHED_REASONS: tuple[str, ...] = ("stop", "length", "abort")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value))


class Histogram:
    """A cumulative-on-render Prometheus histogram: per-bucket counts, sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            cumulative += n
            le = "+Inf" if bound == float("inf") else _num(bound)
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {_num(cumulative)}')
        lines.append(f"{name}_count{{{labels}}} {_num(self.count)}")
        lines.append(f"{name}_sum{{{labels}}} {_num(self.sum)}")
        return lines


class SimMetrics:
    """Counters and gauges of one simulated engine, named and labelled as vLLM does."""

    __slots__ = ("model", "max_num_seqs", "running", "waiting", "prompt_tokens", "generation_tokens",
                 "success", "ttft", "e2e")

    def __init__(self, model: str, max_num_seqs: int) -> None:
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of the (simulated) KV cache in use: running sequences over capacity."""
        return min(1.0, self.running / self.max_num_seqs)

    def finished(self, reason: str, n_prompt: int, n_generated: int, e2e_s: float) -> None:
        """Record one request that left the engine (reason "stop", "length" or "abort")."""
        self.success[reason] += 1
        self.prompt_tokens += n_prompt
        self.generation_tokens += n_generated
        self.e2e.observe(e2e_s)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        labels = f'model_name="{_escape(self.model)}"'
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
               [f"vllm:num_requests_running{{{labels}}} {_num(self.running)}"])
        family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               [f"vllm:num_requests_waiting{{{labels}}} {_num(self.waiting)}"])
        family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
               [f"vllm:kv_cache_usage_perc{{{labels}}} {_num(self.kv_cache_usage)}"])
        family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.",
               [f"vllm:prompt_tokens_total{{{labels}}} {_num(self.prompt_tokens)}"])
        family("vllm:generation_tokens", "counter", "Number of generation tokens processed.",
               [f"vllm:generation_tokens_total{{{labels}}} {_num(self.generation_tokens)}"])
        family("vllm:request_success", "counter", "Count of successfully processed requests.",
               [f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} {_num(n)}'
                for reason, n in self.success.items()])
        family("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
               self.ttft.render("vllm:time_to_first_token_seconds", labels))
        family("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
               self.e2e.render("vllm:e2e_request_latency_seconds", labels))
        out.append("")
        return "\n".join(out)
