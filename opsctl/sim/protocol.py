"""Request validation for the simulator, as strict as vLLM's OpenAI server.

Turns a raw body into a `Generation` (what to produce) or raises an OpenAI-shaped error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.errors import InvalidRequest, NotFound, json_object
from opsctl.sim.config import SimConfig
from opsctl.sim.tokens import chat_prompt_tokens, plan_completion, prompt_tokens

MAX_SEQUENCES = 4096  # prompts x best_of per request: a bound on the simulator's own work, not vLLM's


class ModelNotFound(NotFound):
    """vLLM's answer to a model name it does not serve: type "NotFoundError" and the integer code 404."""

    type = "NotFoundError"

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error"]["code"] = self.status
        return body


class Choice(NamedTuple):  # a tuple: built per choice on every request, so kept cheap
    """One returned sequence: its index in `choices`, length in tokens and finish_reason."""

    index: int
    completion_tokens: int
    finish_reason: str


@dataclass(slots=True)  # not frozen: built on every request, and a frozen __init__ costs ~0.4 µs more
class Generation:
    """What one chat or completion request asks the engine to produce.

    `choices` are the returned sequences in index order (prompt-major: prompt i's j-th choice
    is i * n + j); `generated_tokens` counts every generated sequence, best_of extras included,
    and is what usage.completion_tokens reports.
    """

    prompt_tokens: int
    choices: tuple[Choice, ...]
    generated_tokens: int
    stream: bool
    include_usage: bool

    @property
    def longest(self) -> int:
        """Tokens of the longest sequence: sequences decode in parallel, so this sets the latency."""
        return max(c.completion_tokens for c in self.choices)

    @property
    def finish_reason(self) -> str:
        """The request's outcome for metrics: "length" if any sequence was cut short, else "stop"."""
        return "length" if any(c.finish_reason == "length" for c in self.choices) else "stop"


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """The inputs of one embeddings request."""

    inputs: tuple[str | Sequence[int], ...]
    prompt_tokens: int
    base64: bool


def read_body(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body (InvalidRequest if it is not one)."""
    return json_object(raw)


def check_model(body: Mapping[str, Any], config: SimConfig) -> None:
    """vLLM answers 404 for a model it does not serve; a missing model means the served one."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise InvalidRequest("model must be a string", param="model")
    if model not in config.served_names:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer", param=name)
    if value < 1:
        raise InvalidRequest(f"{name} must be at least 1, got {value}.", param=name)
    return value


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise InvalidRequest("stream_options must be an object", param="stream_options")
    if not stream:
        raise InvalidRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
    include_usage = options.get("include_usage") or False
    if not isinstance(include_usage, bool):
        raise InvalidRequest("stream_options.include_usage must be a boolean", param="stream_options")
    return stream, include_usage


def _sequences(body: Mapping[str, Any], n_prompts: int, stream: bool) -> tuple[int, int]:
    """(n, best_of) after vLLM's checks: best_of >= n, and no best_of > n on a stream (OpenAI's rule)."""
    n = _positive_int(body, "n") or 1
    best_of = _positive_int(body, "best_of") or n
    if best_of < n:
        raise InvalidRequest(f"best_of must be greater than or equal to n, got n={n} and best_of={best_of}.",
                             param="best_of")
    if stream and best_of > n:
        raise InvalidRequest("best_of > n cannot be streamed: only the n best sequences are returned.",
                             param="best_of")
    if n_prompts * best_of > MAX_SEQUENCES:
        raise InvalidRequest(f"The simulator generates at most {MAX_SEQUENCES} sequences per request "
                             f"(prompts x best_of), got {n_prompts * best_of}.", param="n")
    return n, best_of


def _plan(body: Mapping[str, Any], prompts: list[int], config: SimConfig, noun: str) -> Generation:
    stream, include_usage = _stream_flags(body)
    n, best_of = _sequences(body, len(prompts), stream)
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    for n_prompt in prompts:
        if n_prompt + (max_tokens or 1) > config.max_model_len:
            requested = n_prompt + (max_tokens or 0)
            raise InvalidRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
                f"{requested} tokens ({n_prompt} in the {noun}, {max_tokens or 0} in the completion). "
                f"Please reduce the length of the {noun} or completion.",
                param="max_tokens" if max_tokens else noun,
            )
    ignore_eos = body.get("ignore_eos") is True
    choices: list[Choice] = []
    generated = 0
    for n_prompt in prompts:
        tokens, finish = plan_completion(n_prompt, max_tokens, max_model_len=config.max_model_len,
                                         ignore_eos=ignore_eos)
        for _ in range(n):
            choices.append(Choice(len(choices), tokens, finish))
        generated += tokens * best_of
    return Generation(sum(prompts), tuple(choices), generated, stream, include_usage)


def parse_chat(body: Mapping[str, Any], config: SimConfig) -> Generation:
    """Validate a /v1/chat/completions body."""
    check_model(body, config)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string role", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts", param="messages")
    return _plan(body, [chat_prompt_tokens(messages)], config, "messages")


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _one_input(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or _is_token_ids(value)


def _inputs(value: Any, noun: str) -> tuple[Any, ...]:
    """One text or token-id list, or a non-empty list of them, as a tuple of inputs."""
    if _one_input(value):
        return (value,)
    if isinstance(value, list) and value and all(_one_input(v) for v in value):
        return tuple(value)
    raise InvalidRequest(f"{noun} must be a non-empty string, token ids, or a list of them", param=noun)


def parse_completion(body: Mapping[str, Any], config: SimConfig) -> Generation:
    """Validate a /v1/completions body: one prompt (text or token ids) or a list of them."""
    check_model(body, config)
    if body.get("prompt") is None:
        raise InvalidRequest("prompt is required", param="prompt")
    prompts = _inputs(body["prompt"], "prompt")
    return _plan(body, [prompt_tokens(p) for p in prompts], config, "prompt")


def parse_embedding(body: Mapping[str, Any], config: SimConfig) -> EmbeddingJob:
    """Validate a /v1/embeddings body (text, token ids, or a list of either)."""
    check_model(body, config)
    inputs = _inputs(body.get("input"), "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
    n_prompt = sum(prompt_tokens(item) for item in inputs)
    if any(prompt_tokens(item) > config.max_model_len for item in inputs):
        raise InvalidRequest(
            f"This model's maximum context length is {config.max_model_len} tokens; an input is longer.",
            param="input",
        )
    return EmbeddingJob(inputs, n_prompt, fmt == "base64")
