"""Response bodies and SSE chunks in vLLM's exact shapes, built from byte templates.

A stream's per-token chunk is a precomputed prefix + the JSON-encoded text + a suffix, so
streaming costs one small concatenation per token instead of a dict and a serialisation.
"""

from __future__ import annotations

import array
import base64
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from opsctl.sim.protocol import EmbeddingJob, Generation
from opsctl.sim.tokens import embedding_vector

DONE = b"data: [DONE]\n\n"
# What a proxy or a crashed server in front of the engine sends instead of JSON (fault "garbage").
GARBAGE_PAGE = (b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
                b"</center><hr><center>nginx</center></body></html>\n")
GARBAGE_EVENT = b"<html><body>upstream error</body></html>\n\n"

# usage_lie modes: what completion_tokens becomes ("missing" drops the usage object instead).
_LIES: dict[str, Callable[[int], Any]] = {
    "huge": lambda n: 1_000_000_000,
    "string": str,
    "list": lambda n: [n],
    "negative": lambda n: -max(1, n),
    "float": lambda n: n + 0.5,
}


def usage(n_prompt: int, n_completion: int, lie: str | None = None) -> dict[str, Any] | None:
    """vLLM's usage object, or, with a `lie` mode, a malformed one (None for "missing")."""
    if lie == "missing":
        return None
    completion = n_completion if lie is None else _LIES[lie](n_completion)
    return {
        "prompt_tokens": n_prompt,
        "total_tokens": n_prompt + (completion if lie == "huge" else n_completion),
        "completion_tokens": completion,
        "prompt_tokens_details": None,
    }


def _with_usage(body: dict[str, Any], gen: Generation, lie: str | None) -> dict[str, Any]:
    counted = usage(gen.prompt_tokens, gen.generated_tokens, lie)
    if counted is not None:
        body["usage"] = counted
    return body


def chat_body(request_id: str, created: int, model: str, texts: Sequence[str], gen: Generation,
              lie: str | None = None) -> dict[str, Any]:
    return _with_usage({
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": choice.index,
            "message": {"role": "assistant", "content": text, "refusal": None, "tool_calls": []},
            "logprobs": None,
            "finish_reason": choice.finish_reason,
            "stop_reason": None,
        } for choice, text in zip(gen.choices, texts, strict=True)],
    }, gen, lie)


def completion_body(request_id: str, created: int, model: str, texts: Sequence[str], gen: Generation,
                    lie: str | None = None) -> dict[str, Any]:
    return _with_usage({
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": choice.index,
            "text": text,
            "logprobs": None,
            "finish_reason": choice.finish_reason,
            "stop_reason": None,
        } for choice, text in zip(gen.choices, texts, strict=True)],
    }, gen, lie)


def embedding_body(request_id: str, created: int, model: str, job: EmbeddingJob, dim: int) -> dict[str, Any]:
    data = []
    for i, item in enumerate(job.inputs):
        vector: Any = embedding_vector(item, dim)
        if job.base64:
            vector = base64.b64encode(array.array("f", vector).tobytes()).decode()
        data.append({"index": i, "object": "embedding", "embedding": vector})
    return {
        "id": request_id,
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens,
                  "completion_tokens": 0, "prompt_tokens_details": None},
    }


def models_body(names: Sequence[str], root: str, created: int, max_model_len: int) -> dict[str, Any]:
    """vLLM's /v1/models: one card per served name, each rooted at the loaded model."""
    return {
        "object": "list",
        "data": [{
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [],
        } for name in names],
    }


class ChunkFormat:
    """The SSE events of one streamed chat or text completion (choices told apart by `index`)."""

    __slots__ = ("_head", "_token_pre", "_token_post", "_chat", "_lie")

    def __init__(self, request_id: str, created: int, model: str, *, chat: bool, lie: str | None = None) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._chat = chat
        self._lie = lie
        self._head = (
            b'data: {"id":' + orjson.dumps(request_id) + b',"object":"' + obj.encode()
            + b'","created":' + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":'
        )
        self._token_pre: dict[int, bytes] = {}
        if chat:
            self._token_post = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._token_post = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def role(self, index: int = 0) -> bytes:
        """The opening chat chunk of a choice (vLLM sends the role with empty content); empty for completions."""
        if not self._chat:
            return b""
        return self._head + (b'[{"index":%d,"delta":{"role":"assistant","content":""},'
                             b'"logprobs":null,"finish_reason":null}]}\n\n' % index)

    def token(self, piece: str, index: int = 0) -> bytes:
        pre = self._token_pre.get(index)
        if pre is None:
            field = b'"delta":{"content":' if self._chat else b'"text":'
            pre = self._token_pre[index] = self._head + b'[{"index":%d,%s' % (index, field)
        return pre + orjson.dumps(piece) + self._token_post

    def finish(self, reason: str, index: int = 0) -> bytes:
        reason_json = orjson.dumps(reason)
        if self._chat:
            choice = (b'[{"index":%d,"delta":{},"logprobs":null,"finish_reason":%s,"stop_reason":null}]'
                      % (index, reason_json))
        else:
            choice = (b'[{"index":%d,"text":"","logprobs":null,"finish_reason":%s,"stop_reason":null}]'
                      % (index, reason_json))
        return self._head + choice + b"}\n\n"

    def usage(self, n_prompt: int, n_completion: int) -> bytes:
        """The usage chunk (empty choices) before [DONE]; nothing with usage_lie "missing"."""
        counted = usage(n_prompt, n_completion, self._lie)
        if counted is None:
            return b""
        return self._head + b'[],"usage":' + orjson.dumps(counted) + b"}\n\n"
