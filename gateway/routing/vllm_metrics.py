"""Reads the few vLLM load gauges the router needs from a Prometheus text exposition.

A full parser would walk every histogram bucket; this one jumps straight to the wanted series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"  # removed in vLLM PR #29330; older pods still send it


@dataclass(frozen=True, slots=True)
class VllmLoad:
    """Load of one vLLM server; a field is None when the exposition did not carry it."""

    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None  # 0..1, the fullest engine when there are several


def parse_vllm_metrics(text: str, model_name: str | None = None) -> VllmLoad:
    """Extract queue depth, running requests and KV-cache use from `/metrics` text.

    Args:
        text: Prometheus text exposition (version 0.0.4, also the quoted-name UTF-8 form).
        model_name: keep only series whose `model_name` label equals it; when no series
            carries that name (a pod serving under another name), all series count.

    Returns:
        Counts summed over the kept series; KV use as the maximum over them. Garbage lines
        and non-finite values are ignored, so garbage input gives an all-None result.
    """
    text = "\n" + text
    kv = _aggregate(text, KV_USAGE, model_name, max)
    if kv is None:
        kv = _aggregate(text, KV_USAGE_LEGACY, model_name, max)
    return VllmLoad(
        waiting=_aggregate(text, WAITING, model_name, sum),
        running=_aggregate(text, RUNNING, model_name, sum),
        kv_usage=kv,
    )


def _aggregate(
    text: str, name: str, model_name: str | None, combine: Callable[[list[float]], float]
) -> float | None:
    matching: list[float] = []
    others: list[float] = []
    for labels, value in _samples(text, name):
        if model_name is None:
            matching.append(value)
        elif _label(labels, "model_name") == model_name:
            matching.append(value)
        else:
            others.append(value)
    values = matching or others
    return float(combine(values)) if values else None


def _samples(text: str, name: str) -> Iterator[tuple[str, float]]:
    """Yield (label text, value) for every sample line of exactly `name`."""
    needles = [("\n" + name, False)]
    if '\n{"' in text:  # UTF-8 quoted names (Prometheus 3 style); rare, so checked once
        needles.append(('\n{"' + name + '"', True))
    for needle, quoted in needles:
        start = text.find(needle)
        while start != -1:
            pos = start + len(needle)
            end = text.find("\n", pos)
            if end == -1:
                end = len(text)
            parsed = _sample(text[pos:end], quoted)
            if parsed is not None:
                yield parsed
            start = text.find(needle, end)


def _sample(rest: str, quoted: bool) -> tuple[str, float] | None:
    """Parse what follows the metric name: `{labels} value [ts]`, or ` value [ts]`."""
    labels = ""
    if quoted:  # {"name",a="b"} value  -- the name's quotes are already consumed
        close = _closing_brace(rest, 0)
        if close == -1:
            return None
        labels = rest[1:close] if rest.startswith(",") else rest[:close]
        rest = rest[close + 1 :]
    elif rest.startswith("{"):
        close = _closing_brace(rest, 1)
        if close == -1:
            return None
        labels = rest[1:close]
        rest = rest[close + 1 :]
    if not rest[:1].isspace():  # a longer metric name sharing our prefix, or junk
        return None
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return labels, value


def _closing_brace(text: str, pos: int) -> int:
    """Index of the `}` that ends a label set starting at `pos`, skipping quoted values."""
    close = text.find("}", pos)
    if close != -1 and "\\" not in text[pos:close] and text.count('"', pos, close) % 2 == 0:
        return close  # fast path: the first brace is outside quotes
    in_quotes = False
    i = pos
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "}":
            return i
        i += 1
    return -1


def _label(labels: str, key: str) -> str | None:
    """Value of label `key` in `a="x",b="y"` text, unescaping \\\\, \\" and \\n."""
    needle = key + '="'
    pos = 0
    while True:
        at = labels.find(needle, pos)
        if at == -1:
            return None
        if at == 0 or labels[at - 1] in ", ":
            break
        pos = at + 1
    i = at + len(needle)
    end = labels.find('"', i)
    if end != -1 and "\\" not in labels[i:end]:
        return labels[i:end]  # fast path: no escapes
    out: list[str] = []
    n = len(labels)
    while i < n:
        ch = labels[i]
        if ch == "\\" and i + 1 < n:
            nxt = labels[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
            continue
        if ch == '"':
            return "".join(out)
        out.append(ch)
        i += 1
    return None
