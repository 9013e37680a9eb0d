"""What a request is billed: the pod's usage report, checked against what the request could use.

A pod's `usage` is not trusted blindly: token counts must be non-negative integers and the
completion count cannot exceed the cap the gateway sent (per sequence, times the sequences).
A report that fails the check bills the reservation's amounts instead and is charged against
the pod's health by the caller, so a lying or broken pod can neither overdraw a budget nor
crash the request path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gateway.proxy.requests import InferenceRequest

# Reasons a usage report was refused (a bounded set: they label a metric).
MISSING, NOT_INTEGER, NEGATIVE, OVER_CAP = "missing", "not_integer", "negative", "over_cap"
REASONS = (MISSING, NOT_INTEGER, NEGATIVE, OVER_CAP)


class Billed(NamedTuple):
    prompt_tokens: int
    completion_tokens: int
    refused: str | None  # why the pod's report was not used, or None
    prompt_over_bound: bool  # the pod counted more prompt tokens than the gateway's upper bound


def _count(usage: dict[str, Any], name: str, *, required: bool) -> int | str:
    value = usage.get(name)
    if value is None:
        return MISSING if required else 0
    if type(value) is not int:  # bool, float, str, list...: not a count
        return NOT_INTEGER
    if value < 0:
        return NEGATIVE
    return value


def bill(request: InferenceRequest, usage: object) -> Billed:
    """The tokens to bill for a finished request, given the pod's `usage` (any JSON value).

    The prompt is billed as reported but never above the request's prompt bound (the bound is
    what was reserved; a pod above it is flagged, not trusted). A refused report bills the
    reservation: the prompt bound and the full output cap.
    """
    reserved = Billed(request.prompt_bound, request.max_output_tokens, None, False)
    if not isinstance(usage, dict):
        return reserved._replace(refused=MISSING)
    prompt = _count(usage, "prompt_tokens", required=True)
    completion = _count(usage, "completion_tokens", required=request.kind != "embeddings")
    for value in (prompt, completion):
        if isinstance(value, str):
            return reserved._replace(refused=value)
    assert isinstance(prompt, int) and isinstance(completion, int)
    if completion > request.max_output_tokens:
        return reserved._replace(refused=OVER_CAP)
    if prompt > request.prompt_bound:
        return Billed(request.prompt_bound, completion, None, True)
    return Billed(prompt, completion, None, False)


def bill_partial(request: InferenceRequest, content_events: int) -> Billed:
    """A stream that ended early (client gone, pod broke off): the prompt bound and the content
    events relayed so far (vLLM sends one event per token, a few at most under load), within
    the cap."""
    return Billed(request.prompt_bound, min(content_events, request.max_output_tokens), None, False)
