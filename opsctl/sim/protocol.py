"""Request validation for the simulator, as strict as vLLM's OpenAI server.

Turns a raw body into a `Generation` (what to produce) or raises an OpenAI-shaped error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest, NotFound, json_object
from opsctl.sim.config import SimConfig
from opsctl.sim.tokens import chat_prompt_tokens, plan_completion, prompt_tokens


@dataclass(frozen=True, slots=True)
class Generation:
    """What one chat or completion request asks the engine to produce."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool


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
    if model != config.model:
        raise NotFound(f"The model `{model}` does not exist.", code="model_not_found", param="model")


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


def _plan(body: Mapping[str, Any], n_prompt: int, config: SimConfig, noun: str) -> Generation:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("the simulator supports n=1 only", param="n")
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    if n_prompt + (max_tokens or 1) > config.max_model_len:
        requested = n_prompt + (max_tokens or 0)
        raise InvalidRequest(
            f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
            f"{requested} tokens ({n_prompt} in the {noun}, {max_tokens or 0} in the completion). "
            f"Please reduce the length of the {noun} or completion.",
            param="max_tokens" if max_tokens else noun,
        )
    stream, include_usage = _stream_flags(body)
    completion, finish = plan_completion(
        n_prompt, max_tokens, max_model_len=config.max_model_len, ignore_eos=body.get("ignore_eos") is True
    )
    return Generation(n_prompt, completion, finish, stream, include_usage)


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
    return _plan(body, chat_prompt_tokens(messages), config, "messages")


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _one_input(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or _is_token_ids(value)


def parse_completion(body: Mapping[str, Any], config: SimConfig) -> Generation:
    """Validate a /v1/completions body (one prompt: text, token ids, or a one-item list of either)."""
    check_model(body, config)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and not _is_token_ids(prompt):
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequest("prompt is required", param="prompt")
    if isinstance(prompt, list) and prompt and all(_one_input(p) for p in prompt) and not _is_token_ids(prompt):
        raise InvalidRequest("the simulator serves one prompt per request", param="prompt")
    if not _one_input(prompt):
        raise InvalidRequest("prompt must be a non-empty string or a list of token ids", param="prompt")
    return _plan(body, prompt_tokens(prompt), config, "prompt")


def parse_embedding(body: Mapping[str, Any], config: SimConfig) -> EmbeddingJob:
    """Validate a /v1/embeddings body (text, token ids, or a list of either)."""
    check_model(body, config)
    value = body.get("input")
    if _one_input(value):
        inputs: tuple[Any, ...] = (value,)
    elif isinstance(value, list) and value and all(_one_input(v) for v in value):
        inputs = tuple(value)
    else:
        raise InvalidRequest("input must be a non-empty string, token ids, or a list of them", param="input")
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
