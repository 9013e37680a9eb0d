"""Inference request validation and the request's limits, decided before anything is reserved.

Every field the gateway reads, bills on or forwards is checked here (type, range, size), the
body is serialised once (which also bounds its nesting depth), and the request's maximum
output is fixed: the cap forwarded upstream is exactly the cap the budget reserved for, times
every sequence the server may generate (`n`, `best_of`, several prompts). A bad request is an
OpenAI-shaped 400 naming the parameter, never a 500 and never a leaked reservation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import InvalidRequest, json_object
from gateway.limits.estimate import chat_prompt_bound, prompts_bound

MAX_OUTPUT_TOKENS = 1_000_000  # per sequence; real context windows are far below
MAX_SEQUENCES = 128  # n / best_of
MAX_PROMPTS = 2048  # prompts in one /v1/completions, inputs in one /v1/embeddings
MAX_TOKEN_ID = 2**31 - 1
MAX_STOP = 64
MAX_LOGIT_BIAS = 1024
MAX_LOGPROBS = 20
MAX_TOOLS = 512
MAX_NAME = 256  # model, user, role, ...
INT64 = 2**63
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
REQUIRED = {"chat": "messages", "completions": "prompt", "embeddings": "input"}
Checker = Callable[[str, Any, str], None]


@dataclass(slots=True)
class InferenceRequest:
    """A validated request: what is billed, reserved and forwarded.

    Attributes:
        prompt_bound: upper bound of the prompt tokens (gateway/limits/estimate.py).
        output_cap: per-sequence output cap sent upstream (max_tokens and, when the client
            used it, max_completion_tokens); 0 for embeddings.
        sequences: sequences the server may generate (n or best_of, times the prompts).
    """

    body: dict[str, Any]
    kind: str
    model: str
    stream: bool
    wants_usage: bool
    user: str | None
    prompt_bound: int
    output_cap: int
    sequences: int
    _payloads: dict[str, bytes] = field(default_factory=dict)

    @property
    def max_output_tokens(self) -> int:
        """The most completion tokens the request can be billed for."""
        return self.output_cap * self.sequences

    def payload(self, served_model: str) -> bytes:
        """The body sent to a pod serving the model as `served_model`: that name, the reserved
        cap (max_tokens, and max_completion_tokens when the client used it), usage on streams.

        Raises:
            InvalidRequest: the body cannot be serialised (nesting deeper than orjson's 255 levels).
        """
        data = self._payloads.get(served_model)
        if data is None:
            out = dict(self.body)
            out["model"] = served_model
            if self.kind != "embeddings":
                out["max_tokens"] = self.output_cap
                if "max_completion_tokens" in out:
                    out["max_completion_tokens"] = self.output_cap
                if self.stream:
                    out["stream_options"] = {**(self.body.get("stream_options") or {}), "include_usage": True}
            try:
                data = self._payloads[served_model] = orjson.dumps(out)
            except orjson.JSONEncodeError as e:
                raise InvalidRequest(f"Request body cannot be forwarded: {e}.") from e
        return data


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {message}", param=param)


# --- one checker per parameter: (name, value, kind) -> None, raising a 400 naming it ------------

def _number(lo: float, hi: float) -> Checker:
    def check(name: str, value: Any, kind: str) -> None:
        if type(value) not in (int, float) or not lo <= value <= hi:  # NaN fails the range test
            raise _bad(name, f"must be a number between {lo:g} and {hi:g}.")
    return check


def _integer(lo: int, hi: int) -> Checker:
    def check(name: str, value: Any, kind: str) -> None:
        if type(value) is not int or not lo <= value <= hi:
            raise _bad(name, f"must be an integer between {lo} and {hi}.")
    return check


def _boolean(name: str, value: Any, kind: str) -> None:
    if type(value) is not bool:
        raise _bad(name, "must be a boolean.")


def _string(limit: int) -> Checker:
    def check(name: str, value: Any, kind: str) -> None:
        if type(value) is not str or len(value) > limit:
            raise _bad(name, f"must be a string of at most {limit} characters.")
    return check


def _object(name: str, value: Any, kind: str) -> None:
    if type(value) is not dict:
        raise _bad(name, "must be an object.")


def _string_or_object(name: str, value: Any, kind: str) -> None:
    if type(value) not in (str, dict):
        raise _bad(name, "must be a string or an object.")


def _objects(limit: int) -> Checker:
    def check(name: str, value: Any, kind: str) -> None:
        if type(value) is not list or len(value) > limit or not all(type(v) is dict for v in value):
            raise _bad(name, f"must be an array of at most {limit} objects.")
    return check


def _array(name: str, value: Any, kind: str) -> None:
    if type(value) is not list:
        raise _bad(name, "must be an array.")


def _stop(name: str, value: Any, kind: str) -> None:
    if type(value) is str:
        return
    if type(value) is not list or len(value) > MAX_STOP or not all(type(s) is str for s in value):
        raise _bad(name, f"must be a string or an array of at most {MAX_STOP} strings.")


def _token_ids(value: Any) -> bool:
    return type(value) is list and bool(value) and all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in value)


def _stop_token_ids(name: str, value: Any, kind: str) -> None:
    if type(value) is not list or len(value) > 4 * MAX_STOP or not all(
            type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in value):
        raise _bad(name, "must be an array of token ids.")


def _logprobs(name: str, value: Any, kind: str) -> None:
    if kind == "chat":
        _boolean(name, value, kind)
    elif type(value) is not int or not 0 <= value <= MAX_LOGPROBS:
        raise _bad(name, f"must be an integer between 0 and {MAX_LOGPROBS}.")


def _logit_bias(name: str, value: Any, kind: str) -> None:
    if type(value) is not dict or len(value) > MAX_LOGIT_BIAS or not all(
            type(v) in (int, float) and -100 <= v <= 100 for v in value.values()):
        raise _bad(name, f"must map at most {MAX_LOGIT_BIAS} token ids to numbers between -100 and 100.")


def _stream_options(name: str, value: Any, kind: str) -> None:
    if type(value) is not dict:
        raise _bad(name, "must be an object.")
    for option in ("include_usage", "continuous_usage_stats"):
        if value.get(option) is not None and type(value[option]) is not bool:
            raise _bad(f"{name}.{option}", "must be a boolean.")


def _encoding_format(name: str, value: Any, kind: str) -> None:
    if value not in ("float", "base64") or type(value) is not str:
        raise _bad(name, "must be 'float' or 'base64'.")


def _refused(why: str) -> Checker:
    def check(name: str, value: Any, kind: str) -> None:
        raise _bad(name, f"is not allowed: {why}.")
    return check


# OpenAI's parameters and vLLM's common extras. A parameter absent here is forwarded as it is
# (its size is bounded by max_body_bytes and its nesting by serialisation).
CHECKS: dict[str, Checker] = {
    "stream": _boolean, "stream_options": _stream_options, "user": _string(MAX_NAME),
    "max_tokens": _integer(1, MAX_OUTPUT_TOKENS), "max_completion_tokens": _integer(1, MAX_OUTPUT_TOKENS),
    "min_tokens": _integer(0, MAX_OUTPUT_TOKENS), "n": _integer(1, MAX_SEQUENCES),
    "best_of": _integer(1, MAX_SEQUENCES),
    "temperature": _number(0, 2), "top_p": _number(0, 1), "min_p": _number(0, 1),
    "presence_penalty": _number(-2, 2), "frequency_penalty": _number(-2, 2), "repetition_penalty": _number(0, 10),
    "top_k": _integer(-1, 1_000_000), "seed": _integer(-INT64, INT64 - 1), "stop": _stop,
    "stop_token_ids": _stop_token_ids, "logprobs": _logprobs, "top_logprobs": _integer(0, MAX_LOGPROBS),
    "prompt_logprobs": _integer(0, MAX_LOGPROBS), "logit_bias": _logit_bias, "suffix": _string(1 << 20),
    "tools": _objects(MAX_TOOLS), "functions": _objects(MAX_TOOLS), "tool_choice": _string_or_object,
    "function_call": _string_or_object, "response_format": _object, "chat_template_kwargs": _object,
    "documents": _array, "encoding_format": _encoding_format, "dimensions": _integer(1, 65_536),
    **{name: _boolean for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output", "echo",
                                   "parallel_tool_calls", "add_generation_prompt", "continue_final_message",
                                   "add_special_tokens", "spaces_between_special_tokens")},
    # A chat template supplied by the client could render a prompt of any length from a short
    # body, which would break the prompt-token bound the budget relies on.
    "chat_template": _refused("a client-supplied chat template is not accepted by the gateway"),
}


def _prompts(body: dict, name: str) -> list[str] | list[list[int]]:
    """A prompt or embedding input as a list of prompts: text, or token-id lists."""
    value = body.get(name)
    if type(value) is str:
        return [value]
    if type(value) is list and value:
        if _token_ids(value):
            return [value]
        if len(value) <= MAX_PROMPTS:
            if all(type(v) is str for v in value):
                return value
            if all(_token_ids(v) for v in value):
                return value
    raise _bad(name, f"must be a string, an array of at most {MAX_PROMPTS} strings, an array of token ids, "
                     "or an array of token-id arrays.")


def _content(content: Any, index: int) -> None:
    param = f"messages[{index}].content"
    if type(content) is not list:
        raise _bad(param, "must be a string, null, or an array of content parts.")
    for part in content:
        if type(part) is not dict or type(part.get("type")) is not str:
            raise _bad(param, "parts must be objects with a string 'type'.")
        if "text" in part and type(part["text"]) is not str:
            raise _bad(param, "part 'text' must be a string.")


def _tool_calls(calls: Any, index: int) -> None:
    param = f"messages[{index}].tool_calls"
    if type(calls) is not list or len(calls) > MAX_TOOLS:
        raise _bad(param, f"must be an array of at most {MAX_TOOLS} tool calls.")
    for call in calls:
        function = call.get("function") if type(call) is dict else None
        if type(function) is not dict or type(function.get("name", "")) is not str \
                or type(function.get("arguments", "")) is not str:
            raise _bad(param, "items must be objects with a 'function' {name, arguments} of strings.")


def _messages(body: dict) -> None:
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise _bad("messages", "must be a non-empty array of message objects.")
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise _bad("messages", "must be a non-empty array of message objects.")
        role = message.get("role")
        if type(role) is not str or role not in MESSAGE_ROLES:
            raise _bad(f"messages[{i}].role", f"must be one of {', '.join(sorted(MESSAGE_ROLES))}.")
        content = message.get("content")
        if content is not None and type(content) is not str:
            _content(content, i)
        if len(message) > 2:
            for name in ("name", "tool_call_id"):
                if message.get(name) is not None and type(message[name]) is not str:
                    raise _bad(f"messages[{i}].{name}", "must be a string.")
            if message.get("tool_calls") is not None:
                _tool_calls(message["tool_calls"], i)


def parse_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The body as a JSON object with a model name, or an InvalidRequest (first step: the model
    is needed to resolve defaults before `validate`)."""
    body = json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_NAME:
        raise _bad("model", f"is required and must be a string of at most {MAX_NAME} characters.")
    return body


def validate(body: dict[str, Any], kind: str, *, default_max_tokens: int, model_name: str) -> InferenceRequest:
    """Check every field the gateway reads or forwards and fix the request's limits.

    Args:
        body: from `parse_request`.
        kind: "chat", "completions" or "embeddings".
        default_max_tokens: the model's output cap when the client sends none.
        model_name: the registry name of the model; its upstream payload is built here, so a
            body that cannot be forwarded fails before anything is reserved.

    Raises:
        InvalidRequest: naming the offending parameter.
    """
    for name, value in body.items():
        if value is not None:
            check = CHECKS.get(name)
            if check is not None:
                check(name, value, kind)
    required = REQUIRED[kind]
    if body.get(required) is None:
        raise _bad(required, "is required.")
    stream = body.get("stream") is True
    prompts: list[str] | list[list[int]] = []
    if kind == "embeddings":
        prompts = _prompts(body, "input")
        output_cap, sequences, stream = 0, 0, False
    else:
        if kind == "chat":
            _messages(body)
            prompt_count = 1
        else:
            prompts = _prompts(body, "prompt")
            prompt_count = len(prompts)
        # The per-sequence cap: max_completion_tokens first (as vLLM and OpenAI honour it), then
        # max_tokens, then the model's default.
        output_cap = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
        min_tokens = body.get("min_tokens")
        if min_tokens is not None and min_tokens > output_cap:
            raise _bad("min_tokens", f"must not exceed the output cap ({output_cap}).")
        n, best_of = body.get("n") or 1, body.get("best_of")
        if best_of is not None and best_of < n:
            raise _bad("best_of", f"must be >= n ({n}).")
        sequences = max(n, best_of or 1) * prompt_count
    options = body.get("stream_options")
    user = body.get("user")
    request = InferenceRequest(
        body=body, kind=kind, model=body["model"], stream=stream,
        wants_usage=stream and options is not None and options.get("include_usage") is True,
        user=user, prompt_bound=0, output_cap=output_cap, sequences=sequences,
    )
    request.payload(model_name)  # serialisable, hence nested at most 255 deep: safe to measure
    request.prompt_bound = chat_prompt_bound(body) if kind == "chat" else prompts_bound(prompts)
    return request
